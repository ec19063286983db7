#!/usr/bin/env python3
"""strictfs: a FUSE filesystem that loses power on command.

It keeps everything in memory and tracks, beside what a program sees now, what a
disk would hold after a power cut under the strictest rules POSIX allows:

- a file's data and size survive only as of its last fsync or fdatasync;
- a directory's entries (create, link, rename, unlink, mkdir) survive only as of
  the last fsync of that directory;
- nothing else does: no ordering between files, no "rename is atomic on disk",
  no fsync of a file carrying its name with it (ext4 with a journal gives that,
  POSIX does not).

On command it cuts: from then on every operation fails with EIO, and it computes
the state a disk would come back with, writes it to the image file and serves
nothing more. Unmount it and start it again on the image: that is the reboot.
(A new mount has no page cache, so nothing survives that the image does not hold.)

What is not durable at the cut is lost in one of two ways (--policy):
  lose  every change since the last sync is dropped (the default, and the model
        the project's promises are tested against);
  mix   a write-back disk without a journal (ext2, ext4 without one): each change
        since the last sync reached the disk or not, independently, chosen by the
        seeded random number generator. A write may also be torn at a 512-octet
        sector; a directory entry takes any value it held since its directory's
        last fsync, so a rename between two directories may leave the file in
        both, or in neither. (A journaled ext4 keeps a rename whole: this is
        stricter, on purpose.)

Control: the file `.strictfs` in the mount's root (it is not listed).
  write "cut"             cut now
  write "arm OP N"        cut right after the Nth operation OP from now, which
                          succeeds: OP is one of fsync (files and directories),
                          rename, unlink, link, write, truncate, create, mkdir, any
  read                    "state running|cut ops N fsync N ... armed OP N"

Usage: strictfs.py MOUNTPOINT --image FILE [--seed S] [--policy lose|mix]
  An existing image is served as the disk's state; otherwise it starts empty.
Needs /dev/fuse, libfuse3 and the mfusepy package.
"""
import argparse
import errno
import os
import pickle
import random
import stat
import sys
import threading
import time

import mfusepy as fuse

CONTROL = "/.strictfs"
COUNTED = ("fsync", "rename", "unlink", "link", "write", "truncate", "create", "mkdir")


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "rdev", "mtime", "nlink",
                 "data", "durable", "pending",          # files
                 "entries", "dentries", "history",      # directories
                 "opens")

    def __init__(self, ino, mode, uid=0, gid=0, rdev=0):
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.mtime = time.time()
        self.nlink = 0
        self.opens = 0
        if stat.S_ISDIR(mode):
            self.entries = {}    # name -> ino, as seen now
            self.dentries = {}   # name -> ino, as of the last fsync of this directory
            self.history = {}    # name -> [value at the last fsync, later values...]
        else:
            self.data = bytearray()
            self.durable = b""   # as of the last fsync; a file never synced is empty
            self.pending = []    # ("w", offset, bytes) / ("t", length) since then

    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__ if hasattr(self, k)}

    def __setstate__(self, st):
        for k, v in st.items():
            setattr(self, k, v)


def apply_write(buf, offset, data):
    if offset > len(buf):
        buf.extend(b"\0" * (offset - len(buf)))
    buf[offset:offset + len(data)] = data


def apply_truncate(buf, length):
    if length < len(buf):
        del buf[length:]
    else:
        buf.extend(b"\0" * (length - len(buf)))


class StrictFS(fuse.Operations):
    use_ns = True

    def __init__(self, image, seed, policy):
        self.image, self.policy = image, policy
        self.rng = random.Random(seed)
        self.mu = threading.RLock()
        self.cut = False
        self.counts = dict.fromkeys(COUNTED + ("any",), 0)
        self.armed = None  # [op, remaining]
        self.handles = {}  # fh -> ino
        self.next_fh = 1
        if image and os.path.exists(image):
            with open(image, "rb") as f:
                self.inodes, self.next_ino = pickle.load(f)
            for n in self.inodes.values():
                n.opens = 0
        else:
            self.inodes = {1: Inode(1, stat.S_IFDIR | 0o755)}
            self.inodes[1].nlink = 2
            self.next_ino = 2

    # ---- the model -------------------------------------------------------------

    def count(self, op):
        """Counts an operation that changed something; cuts if it was the armed one."""
        self.counts[op] += 1
        self.counts["any"] += 1
        if self.armed and self.armed[0] in (op, "any"):
            self.armed[1] -= 1
            if self.armed[1] <= 0:
                self.power_cut()

    def set_entry(self, d, name, ino):
        """Changes one entry of directory `d` (ino None: removes it), with its history."""
        h = d.history.setdefault(name, [d.dentries.get(name)])
        if ino is None:
            d.entries.pop(name, None)
        else:
            d.entries[name] = ino
        h.append(ino)

    def power_cut(self):
        """Freezes, and writes the state a disk would come back with."""
        self.cut = True
        rng = self.rng
        survived = {}
        for ino, n in self.inodes.items():
            if n.is_dir():
                entries = dict(n.dentries)
                if self.policy == "mix":
                    for name, values in n.history.items():
                        v = rng.choice(values)
                        if v is None:
                            entries.pop(name, None)
                        else:
                            entries[name] = v
                survived[ino] = entries
            else:
                buf = bytearray(n.durable)
                if self.policy == "mix":
                    for op in n.pending:
                        r = rng.random()
                        if r < 0.5:
                            continue
                        if op[0] == "t":
                            apply_truncate(buf, op[1])
                        elif r < 0.9 or len(op[2]) <= 512:
                            apply_write(buf, op[1], op[2])
                        else:
                            # Torn at a sector boundary inside the write.
                            end = ((op[1] + rng.randrange(1, len(op[2]))) // 512) * 512
                            if end > op[1]:
                                apply_write(buf, op[1], op[2][:end - op[1]])
                survived[ino] = bytes(buf)
        # What the root reaches after the cut; the rest is gone (fsck would free it).
        keep, todo = {}, [1]
        while todo:
            ino = todo.pop()
            if ino in keep or ino not in self.inodes:
                continue
            old = self.inodes[ino]
            n = Inode(ino, old.mode, old.uid, old.gid, old.rdev)
            n.mtime = old.mtime
            if n.is_dir():
                n.entries = {k: v for k, v in survived[ino].items() if v in self.inodes}
                n.dentries = dict(n.entries)
                todo.extend(n.entries.values())
            else:
                n.data = bytearray(survived[ino])
                n.durable = bytes(n.data)
            keep[ino] = n
        for n in keep.values():
            n.nlink = 2 if n.is_dir() else 0
        for n in keep.values():
            if n.is_dir():
                for v in n.entries.values():
                    c = keep[v]
                    if c.is_dir():
                        n.nlink += 1
                    else:
                        c.nlink += 1
        tmp = self.image + ".new"
        with open(tmp, "wb") as f:
            pickle.dump((keep, self.next_ino), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.image)
        sys.stderr.write(f"strictfs: power cut after {self.counts['any']} operations "
                         f"({self.counts['fsync']} fsyncs); image {self.image}\n")
        sys.stderr.flush()

    # ---- lookups -----------------------------------------------------------------

    def check(self):
        if self.cut:
            raise fuse.FuseOSError(errno.EIO)

    def lookup(self, path):
        n = self.inodes[1]
        for part in path.split("/"):
            if not part:
                continue
            if not n.is_dir():
                raise fuse.FuseOSError(errno.ENOTDIR)
            ino = n.entries.get(part)
            if ino is None:
                raise fuse.FuseOSError(errno.ENOENT)
            n = self.inodes[ino]
        return n

    def parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        d = self.lookup(head)
        if not d.is_dir():
            raise fuse.FuseOSError(errno.ENOTDIR)
        return d, name

    def node(self, path, fh):
        if fh and fh in self.handles:
            return self.inodes[self.handles[fh]]
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self.lookup(path)

    def new_inode(self, mode, rdev=0):
        ctx = fuse.fuse_get_context()
        n = Inode(self.next_ino, mode, ctx[0], ctx[1], rdev)
        self.inodes[n.ino] = n
        self.next_ino += 1
        return n

    def add_entry(self, path, mode, rdev=0, op="create"):
        """A new inode under a new name (mkdir, create, mknod)."""
        d, name = self.parent(path)
        if name in d.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        n = self.new_inode(mode, rdev)
        if n.is_dir():
            n.nlink = 2
            d.nlink += 1
        else:
            n.nlink = 1
        self.set_entry(d, name, n.ino)
        self.count(op)
        return n

    def new_fh(self, n):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n.ino
        n.opens += 1
        return fh

    def maybe_free(self, n):
        if n.nlink <= 0 and n.opens <= 0 and n.ino != 1:
            self.inodes.pop(n.ino, None)

    # ---- the control file ----------------------------------------------------------

    def control_text(self):
        parts = ["state " + ("cut" if self.cut else "running")]
        parts += [f"{k} {v}" for k, v in self.counts.items()]
        if self.armed:
            parts.append(f"armed {self.armed[0]} {self.armed[1]}")
        return (" ".join(parts) + "\n").encode()

    def control(self, text):
        words = text.split()
        if words == ["cut"]:
            if not self.cut:
                self.power_cut()
        elif len(words) == 3 and words[0] == "arm" and words[1] in COUNTED + ("any",):
            self.armed = [words[1], int(words[2])]
        else:
            raise fuse.FuseOSError(errno.EINVAL)

    # ---- operations -------------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mu:
            if path == CONTROL:
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 4096, "st_ino": 0xFFFFFFFF}
            self.check()
            n = self.node(path, fh)
            size = len(n.data) if not n.is_dir() else 4096
            t = int(n.mtime * 1e9)
            return {"st_mode": n.mode, "st_ino": n.ino, "st_nlink": max(n.nlink, 1 if n.opens else 0),
                    "st_uid": n.uid, "st_gid": n.gid, "st_rdev": n.rdev, "st_size": size,
                    "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                    "st_atime": t, "st_mtime": t, "st_ctime": t}

    def readdir(self, path, fh):
        with self.mu:
            self.check()
            d = self.lookup(path)
            # With use_ino each entry needs its inode number: readdir(3) skips 0.
            out = [(".", {"st_mode": d.mode, "st_ino": d.ino}, 0), ("..", {"st_mode": stat.S_IFDIR, "st_ino": 1}, 0)]
            for name, ino in d.entries.items():
                out.append((name, {"st_mode": self.inodes[ino].mode, "st_ino": ino}, 0))
            return out

    def opendir(self, path):
        with self.mu:
            self.check()
            self.lookup(path)
            return 0

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mu:
            self.check()
            d = self.lookup(path)
            d.dentries = dict(d.entries)
            d.history = {}
            self.count("fsync")
            return 0

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 21,
                "f_bavail": 1 << 21, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_favail": 1 << 19,
                "f_namemax": 255}

    def mkdir(self, path, mode):
        with self.mu:
            self.check()
            self.add_entry(path, stat.S_IFDIR | (mode & 0o7777), op="mkdir")
            return 0

    def rmdir(self, path):
        with self.mu:
            self.check()
            d, name = self.parent(path)
            n = self.lookup(path)
            if not n.is_dir():
                raise fuse.FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            self.set_entry(d, name, None)
            d.nlink -= 1
            n.nlink = 0
            self.maybe_free(n)
            self.count("unlink")
            return 0

    def create(self, path, mode, flags):
        with self.mu:
            if path == CONTROL:
                raise fuse.FuseOSError(errno.EEXIST)
            self.check()
            d, name = self.parent(path)
            if name in d.entries:
                n = self.inodes[d.entries[name]]
                if flags & os.O_EXCL:
                    raise fuse.FuseOSError(errno.EEXIST)
            else:
                n = self.add_entry(path, stat.S_IFREG | (mode & 0o7777))
            return self.new_fh(n)

    def mknod(self, path, mode, dev):
        with self.mu:
            self.check()
            self.add_entry(path, mode, dev)
            return 0

    def open(self, path, flags):
        with self.mu:
            if path == CONTROL:
                return 0
            self.check()
            n = self.lookup(path)
            if flags & os.O_TRUNC and not n.is_dir():
                self._truncate(n, 0)
            return self.new_fh(n)

    def release(self, path, fh):
        with self.mu:
            ino = self.handles.pop(fh, None)
            if ino is not None and ino in self.inodes:
                n = self.inodes[ino]
                n.opens -= 1
                self.maybe_free(n)
            return 0

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with self.mu:
            if fh == 0 and path == CONTROL:
                return self.control_text()[offset:offset + size]
            self.check()
            n = self.node(path, fh)
            return bytes(n.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mu:
            if fh == 0 and path == CONTROL:
                self.control(bytes(data).decode("ascii", "replace"))
                return len(data)
            self.check()
            n = self.node(path, fh)
            data = bytes(data)
            apply_write(n.data, offset, data)
            n.pending.append(("w", offset, data))
            n.mtime = time.time()
            self.count("write")
            return len(data)

    def _truncate(self, n, length):
        apply_truncate(n.data, length)
        n.pending.append(("t", length))
        n.mtime = time.time()
        self.count("truncate")

    def truncate(self, path, length, fh=None):
        with self.mu:
            if path == CONTROL:
                return 0
            self.check()
            n = self.node(path, fh)
            if n.is_dir():
                raise fuse.FuseOSError(errno.EISDIR)
            self._truncate(n, length)
            return 0

    def fsync(self, path, datasync, fh):
        with self.mu:
            if fh == 0 and path == CONTROL:
                return 0
            self.check()
            n = self.node(path, fh)
            if not n.is_dir():
                n.durable = bytes(n.data)
                n.pending = []
            self.count("fsync")
            return 0

    def unlink(self, path):
        with self.mu:
            self.check()
            d, name = self.parent(path)
            n = self.lookup(path)
            if n.is_dir():
                raise fuse.FuseOSError(errno.EISDIR)
            self.set_entry(d, name, None)
            n.nlink -= 1
            self.maybe_free(n)
            self.count("unlink")
            return 0

    def link(self, target, source):
        with self.mu:
            self.check()
            n = self.lookup(source)
            if n.is_dir():
                raise fuse.FuseOSError(errno.EPERM)
            d, name = self.parent(target)
            if name in d.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            self.set_entry(d, name, n.ino)
            n.nlink += 1
            self.count("link")
            return 0

    def rename(self, old, new):
        with self.mu:
            self.check()
            od, oname = self.parent(old)
            nd, nname = self.parent(new)
            n = self.lookup(old)
            target = nd.entries.get(nname)
            if target == n.ino:
                # POSIX: two links to one file; rename does nothing.
                return 0
            if target is not None:
                t = self.inodes[target]
                if t.is_dir():
                    if not n.is_dir():
                        raise fuse.FuseOSError(errno.EISDIR)
                    if t.entries:
                        raise fuse.FuseOSError(errno.ENOTEMPTY)
                elif n.is_dir():
                    raise fuse.FuseOSError(errno.ENOTDIR)
            self.set_entry(od, oname, None)
            self.set_entry(nd, nname, n.ino)
            if target is not None:
                t = self.inodes[target]
                t.nlink -= 2 if t.is_dir() else 1
                self.maybe_free(t)
            if n.is_dir() and od is not nd:
                od.nlink -= 1
                nd.nlink += 1
            self.count("rename")
            return 0

    def chmod(self, path, mode):
        with self.mu:
            self.check()
            n = self.lookup(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        with self.mu:
            self.check()
            n = self.lookup(path)
            if uid != -1 and uid != 0xFFFFFFFF:
                n.uid = uid
            if gid != -1 and gid != 0xFFFFFFFF:
                n.gid = gid
            return 0

    def utimens(self, path, times=None):
        with self.mu:
            self.check()
            n = self.lookup(path)
            n.mtime = (times[1] / 1e9) if times else time.time()
            return 0

    def access(self, path, amode):
        with self.mu:
            if path != CONTROL:
                self.check()
                self.lookup(path)
            return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mountpoint")
    ap.add_argument("--image", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", choices=("lose", "mix"), default="lose")
    a = ap.parse_args()
    fs = StrictFS(os.path.abspath(a.image), a.seed, a.policy)
    fuse.FUSE(fs, a.mountpoint, foreground=True, nothreads=False, allow_other=True,
              hard_remove=True, use_ino=True, fsname="strictfs", attr_timeout=0, entry_timeout=0,
              negative_timeout=0)


if __name__ == "__main__":
    main()
