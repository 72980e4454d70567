"""`python -m testbed.up`: start the local test-bed daemons and push the sample images.

Used by scripts/quickstart.sh: dockerd, binfmt_misc (qemu for ARM containers),
the local OCI registry on 127.0.0.1:5000, and the multi-arch busybox image
built offline from Debian packages.  Prints the image reference.
"""

from __future__ import annotations

import sys

from testbed.daemons import ensure_binfmt, ensure_dockerd, ensure_registry
from testbed.images import build_busybox


def main() -> int:
    ensure_dockerd()
    ensure_binfmt()
    image = build_busybox(ensure_registry())
    for platform, digest in sorted(image.digests.items()):
        print(f"  {platform:14} {digest}", file=sys.stderr)
    print(image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
