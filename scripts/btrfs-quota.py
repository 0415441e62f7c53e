#!/usr/bin/env python3
"""Job: switch a mounted btrfs file system to simple quotas (squota), which Docker's `size`
storage option then enforces; used by scripts/ensure-docker.sh.

Why simple quotas: with classic quota groups, Linux 6.x marks the accounting inconsistent
whenever a removed container's qgroup is deleted before the cleaner has dropped its subvolume
("to be deleted qgroup ... has non-zero numbers"), and an inconsistent accounting enforces no
limit until a rescan: a run could fill the disk. Simple quotas (Linux 6.7+) account each extent
to the subvolume that wrote it and never go inconsistent. Debian 12's btrfs-progs predates them,
hence this ioctl.

Usage: btrfs-quota.py MOUNTPOINT FS_UUID   (prints the quota mode it leaves; exit 1 unless squota)
"""

import fcntl
import os
import struct
import sys
from pathlib import Path

BTRFS_IOC_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
QUOTA_CTL_DISABLE = 2
QUOTA_CTL_ENABLE_SIMPLE = 4


def quota_ctl(mountpoint: str, command: int) -> None:
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, struct.pack("QQ", command, 0))
    finally:
        os.close(fd)


def mode(uuid: str) -> str:
    path = Path(f"/sys/fs/btrfs/{uuid}/qgroups/mode")
    return path.read_text().strip() if path.exists() else "disabled"


def main() -> int:
    mountpoint, uuid = sys.argv[1], sys.argv[2]
    if mode(uuid) != "squota":
        if mode(uuid) != "disabled":
            quota_ctl(mountpoint, QUOTA_CTL_DISABLE)
        quota_ctl(mountpoint, QUOTA_CTL_ENABLE_SIMPLE)
    print(mode(uuid))
    return 0 if mode(uuid) == "squota" else 1


if __name__ == "__main__":
    sys.exit(main())
