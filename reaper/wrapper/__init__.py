"""``lock-reaper run -- terraform ...``: run a command under a lease (issue 12).

- ``host``: prctl/unshare through ctypes, the boot-time clock, the /proc scan for
  other terraform processes of this user;
- ``guard``: the small process that leads the command's process group, waits for every
  descendant (a subreaper, or the init of a PID namespace) and kills the whole group when
  the wrapper dies;
- ``schedule``: the fence and shield times, pure;
- ``lease``: the claim item with its lease attributes and its conditional updates;
- ``runner``: the wrapper's main loop (renewals, fencing, signal shielding, the exit record).

The attributes written are those of ``reaper.liveness.lease_fields``.
"""
