"""Liveness checkers behind the LivenessChecker port (reaper.ports).

- ``composite``: combines the checkers (any alive -> alive; an authoritative dead -> dead;
  a contested unknown -> unknown; dead needs proof; else unknown);
- ``claims``: the claims table (``python -m reaper claim`` is ``reaper.commands.claim``);
- ``github``, ``gitlab``: CI evidence (claimed jobs, self-hosted runners, repo/project mappings);
- ``state_activity``: S3 HeadObject on the state object;
- ``identity``: ``Who`` as Terraform computes it, and what a hostname tells;
- ``facts``: the small helpers that build facts with evidence; ``build``: the checkers from the policy.

The HTTP client and tokens are ``reaper.http``; the policy's ``liveness`` section is
``reaper.policy.liveness``.
"""
