"""A seccomp-BPF filter for sandboxed runs. Stdlib only: the sandbox's fork server loads it.

Denied (EPERM unless noted): the kernel keyring (keyctl, add_key, request_key: a uid's
keyring outlives its processes, a channel between runs), ptrace and cross-process memory
access, new namespaces (unshare, setns, clone with CLONE_NEW*), mount and module syscalls,
bpf, perf_event_open, userfaultfd, io_uring, kexec, syslog, System V IPC and POSIX message
queues (their objects outlive the process, and the runs of a slot share an IPC namespace; POSIX
semaphores and shared memory live in the run's private /dev/shm), and creating sockets of any
family but AF_INET and AF_INET6 (AF_UNIX: EACCES, so no connecting to any socket file or
abstract name; `socketpair` stays allowed; others, e.g. vsock to a VM's host, EAFNOSUPPORT).
clone3 answers ENOSYS, so libc falls back to clone, whose flags are checked. Other
architectures than the native one (x32, i386 on x86_64) are killed.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG0 = 0, 4, 16
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_LD_W_ABS, _JEQ_K, _JSET_K, _JGE_K, _RET_K = 0x20, 0x15, 0x45, 0x35, 0x06
_SECCOMP_MODE_FILTER, _PR_SET_SECCOMP = 2, 22
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
CLONE_NEW_ANY = (
    0x00020000  # NEWNS
    | 0x02000000  # NEWCGROUP
    | 0x04000000  # NEWUTS
    | 0x08000000  # NEWIPC
    | 0x10000000  # NEWUSER
    | 0x20000000  # NEWPID
    | 0x40000000  # NEWNET
    | 0x00000080  # NEWTIME
)

_DENIED = (
    "keyctl add_key request_key ptrace process_vm_readv process_vm_writev unshare setns mount "
    "umount2 pivot_root chroot bpf perf_event_open userfaultfd io_uring_setup io_uring_enter "
    "io_uring_register kexec_load kexec_file_load init_module finit_module delete_module "
    "open_by_handle_at name_to_handle_at syslog swapon swapoff reboot acct quotactl "
    "fanotify_init fsopen fsconfig fsmount fspick open_tree move_mount mount_setattr "
    "process_madvise pidfd_getfd shmget shmat shmctl shmdt msgget msgsnd msgrcv msgctl semget "
    "semop semctl semtimedop mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify "
    "mq_getsetattr"
).split()

# (audit arch, syscall numbers, first number of a foreign ABI on this arch or None)
# fmt: off
_ARCHES: dict[str, tuple[int, dict[str, int], int | None]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41, "clone": 56, "ptrace": 101, "syslog": 103, "chroot": 161,
            "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
            "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179,
            "pivot_root": 155, "add_key": 248, "request_key": 249, "keyctl": 250,
            "unshare": 272, "perf_event_open": 298, "fanotify_init": 300,
            "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
            "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
            "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "kexec_load": 246,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
            "process_madvise": 440, "mount_setattr": 442,
            "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65,
            "semctl": 66, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
            "semtimedop": 220, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
            "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
        },
        0x40000000,  # x32 ABI numbers
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198, "clone": 220, "ptrace": 117, "syslog": 116, "chroot": 51,
            "acct": 89, "mount": 40, "umount2": 39, "swapon": 224, "swapoff": 225,
            "reboot": 142, "init_module": 105, "delete_module": 106, "quotactl": 60,
            "pivot_root": 41, "add_key": 217, "request_key": 218, "keyctl": 219,
            "unshare": 97, "perf_event_open": 241, "fanotify_init": 262,
            "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
            "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273,
            "kexec_file_load": 294, "bpf": 280, "userfaultfd": 282, "kexec_load": 104,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
            "process_madvise": 440, "mount_setattr": 442,
            "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190,
            "semop": 193, "semctl": 191, "msgget": 186, "msgsnd": 189, "msgrcv": 188,
            "msgctl": 187, "semtimedop": 192, "mq_open": 180, "mq_unlink": 181,
            "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185,
        },
        None,
    ),
}
# fmt: on


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes:
    """The BPF program (sock_filter array) for `machine` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no seccomp filter for architecture {machine!r}")
    audit_arch, nr, foreign = _ARCHES[machine]
    deny = _RET_ERRNO | errno.EPERM
    prog = [_ins(_LD_W_ABS, _ARCH), _ins(_JEQ_K, audit_arch, 1, 0)]
    prog.append(_ins(_RET_K, _RET_KILL_PROCESS))
    prog.append(_ins(_LD_W_ABS, _NR))
    if foreign is not None:
        prog += [_ins(_JGE_K, foreign, 0, 1), _ins(_RET_K, _RET_KILL_PROCESS)]
    for name in _DENIED:
        prog += [_ins(_JEQ_K, nr[name], 0, 1), _ins(_RET_K, deny)]
    prog += [_ins(_JEQ_K, nr["clone3"], 0, 1), _ins(_RET_K, _RET_ERRNO | errno.ENOSYS)]
    # socket(family, ...): AF_INET and AF_INET6 only (the network namespace has no interface);
    # AF_UNIX is EACCES, any other family (netlink, vsock to a VM's host, ...) EAFNOSUPPORT.
    # The low word of args[0] on a little-endian machine.
    prog += [
        _ins(_JEQ_K, nr["socket"], 0, 7),
        _ins(_LD_W_ABS, _ARG0),
        _ins(_JEQ_K, AF_INET, 3, 0),
        _ins(_JEQ_K, AF_INET6, 2, 0),
        _ins(_JEQ_K, AF_UNIX, 0, 2),
        _ins(_RET_K, _RET_ERRNO | errno.EACCES),
        _ins(_RET_K, _RET_ALLOW),
        _ins(_RET_K, _RET_ERRNO | errno.EAFNOSUPPORT),
    ]
    # clone(flags, ...) with any CLONE_NEW* flag: EPERM (threads and fork stay allowed).
    prog += [
        _ins(_JEQ_K, nr["clone"], 0, 3),
        _ins(_LD_W_ABS, _ARG0),
        _ins(_JSET_K, CLONE_NEW_ANY, 0, 1),
        _ins(_RET_K, deny),
    ]
    prog.append(_ins(_RET_K, _RET_ALLOW))
    return b"".join(prog)


_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Apply `program` to the calling thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {errno.errorcode.get(err, err)}")


def syscall_numbers(machine: str) -> dict[str, int]:
    """This architecture's numbers of the syscalls named above (the server calls a few)."""
    if machine not in _ARCHES:
        raise OSError(f"no seccomp filter for architecture {machine!r}")
    return dict(_ARCHES[machine][1])
