"""Liveness checkers behind the LivenessChecker port (reaper.ports).

- ``composite``: combines the checkers (any alive -> alive; dead needs proof; else unknown);
- ``claims`` / ``claim_cli``: the claims table and ``python -m reaper claim``;
- ``github``, ``gitlab``: CI evidence (claimed jobs, self-hosted runners, repo/project mappings);
- ``state_activity``: S3 HeadObject on the state object;
- ``http``: the urllib3 client (timeouts, ETags, rate limits, pagination, call counter);
- ``tokens``: Secrets Manager tokens and GitHub App installation tokens;
- ``identity``: ``Who`` as Terraform computes it, and what a hostname tells;
- ``settings``: the policy's ``liveness`` section; ``build``: wiring; ``explain``: one lock's chain.
"""
