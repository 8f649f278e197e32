/**
 * initless's default system-call filter, as data: the `linux.seccomp` section of the OCI runtime
 * config that runc installs when a bake boots a function (CRIU dumps the filter with the process
 * and every restore brings it back; docs/security.md).
 *
 * It is an allowlist: any call not listed fails with EPERM. It was written from Docker's documented
 * default profile (docs.docker.com/engine/security/seccomp/ and the rationale of its blocked calls)
 * for the capability set instances get (oci-spec.ts DEFAULT_CAPABILITIES: no CAP_SYS_ADMIN,
 * CAP_SYS_PTRACE, CAP_SYS_TIME, CAP_SYS_MODULE...), and is a subset of what Docker's profile allows
 * such a container: every call here is allowed by Docker's too, and these Docker allows are
 * left out on purpose:
 * - `ptrace`, `process_vm_readv`, `process_vm_writev`: inspecting other processes (Docker allows
 *   them on kernels >= 4.8); a function has no use for them, debuggers can use a custom profile.
 * - `modify_ldt`: 16-bit segments (Wine, old threading libraries); Docker blocked it until 2021.
 * - `fanotify_mark`: useless without `fanotify_init`, which needs CAP_SYS_ADMIN.
 * - `adjtimex`, `clock_adjtime`: they only read the clock without CAP_SYS_TIME, and Docker's own
 *   documentation lists `clock_adjtime` as blocked.
 * - sockets of any family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (Docker allows some 30;
 *   AF_PACKET, AF_ALG, AF_VSOCK, Bluetooth, CAN... have no place in an HTTP function).
 * - 32-bit system calls (`architectures` unset: the host's native one only), which also removes
 *   `socketcall`, the 32-bit multiplexer that would bypass the socket-family rule.
 *
 * Blocked, as in Docker's profile (not listed below): namespaces (`unshare`, `setns`, `clone` with
 * CLONE_NEW* flags; `clone3`, whose flags a filter cannot read, answers ENOSYS so libc falls back
 * to `clone`), mounts (`mount`, `umount2`, `pivot_root`, the new mount API), the kernel keyring
 * (`keyctl`, `add_key`, `request_key`: not namespaced), `bpf`, `perf_event_open`, `userfaultfd`,
 * `io_uring_*` (CRIU cannot checkpoint io_uring either), kernel modules, `kexec_*`, `reboot`,
 * setting clocks (`settimeofday`, `clock_settime`), swap, quotas, `acct`, NUMA policy (`mbind`,
 * `set_mempolicy`, `move_pages`), `open_by_handle_at`, `kcmp`, `pidfd_getfd`, `lookup_dcookie`,
 * `syslog`, `vhangup`, `ioperm`/`iopl`, and obsolete calls (`uselib`, `ustat`, `sysfs`, `_sysctl`,
 * `nfsservctl`, `vm86`).
 *
 * Names the host's libseccomp does not know (newer calls, other architectures) are skipped by runc.
 * A change here changes every snapshot's identity (the profile is hashed into it): all re-bake.
 */
import type { SeccompProfileFile } from '../../shared/seccomp.ts'

type SeccompRule = SeccompProfileFile['syscalls'][number]

const EPERM = 1
const ENOSYS = 38

/** Files, directories, links, permissions and extended attributes (the kernel checks access). */
// prettier-ignore
const FILES = [
  'access', 'chdir', 'chmod', 'chown', 'close', 'close_range', 'copy_file_range', 'creat',
  'faccessat', 'faccessat2', 'fadvise64', 'fallocate', 'fchdir', 'fchmod', 'fchmodat', 'fchmodat2',
  'fchown', 'fchownat', 'fcntl', 'fdatasync', 'fgetxattr', 'flistxattr', 'flock', 'fremovexattr',
  'fsetxattr', 'fstat', 'fstatfs', 'fsync', 'ftruncate', 'futimesat', 'getcwd', 'getdents',
  'getdents64', 'getxattr', 'getxattrat', 'lchown', 'lgetxattr', 'link', 'linkat', 'listxattr',
  'listxattrat', 'llistxattr', 'lremovexattr', 'lseek', 'lsetxattr', 'lstat', 'mkdir', 'mkdirat',
  'mknod', 'mknodat', 'name_to_handle_at', 'newfstatat', 'open', 'openat', 'openat2', 'readahead',
  'readlink', 'readlinkat', 'removexattr', 'removexattrat', 'rename', 'renameat', 'renameat2',
  'rmdir', 'setxattr', 'setxattrat', 'stat', 'statfs', 'statx', 'symlink', 'symlinkat', 'sync',
  'sync_file_range', 'syncfs', 'truncate', 'umask', 'unlink', 'unlinkat', 'utime', 'utimensat',
  'utimes', 'cachestat', 'statmount', 'listmount',
]

/** Reading and writing descriptors, pipes, splicing, event and timer descriptors, polling. */
// prettier-ignore
const IO = [
  'dup', 'dup2', 'dup3', 'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old',
  'epoll_pwait', 'epoll_pwait2', 'epoll_wait', 'epoll_wait_old', 'eventfd', 'eventfd2',
  'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch', 'ioctl', 'pipe', 'pipe2',
  'poll', 'ppoll', 'pread64', 'preadv', 'preadv2', 'pselect6', 'pwrite64', 'pwritev', 'pwritev2',
  'read', 'readv', 'select', 'sendfile', 'signalfd', 'signalfd4', 'splice', 'tee', 'timerfd_create',
  'timerfd_gettime', 'timerfd_settime', 'vmsplice', 'write', 'writev', 'getrandom',
  // Linux AIO (databases, the JVM's optional async file channel); io_uring stays blocked.
  'io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_setup', 'io_submit',
]

/** The process's own memory. */
// prettier-ignore
const MEMORY = [
  'brk', 'madvise', 'map_shadow_stack', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore',
  'mlock', 'mlock2', 'mlockall', 'mmap', 'mprotect', 'mremap', 'mseal', 'msync', 'munlock',
  'munlockall', 'munmap', 'pkey_alloc', 'pkey_free', 'pkey_mprotect', 'remap_file_pages',
  'process_mrelease',
]

/**
 * Processes and threads (`clone` itself is in CLONE below), exec, exit, waiting, identity. The
 * set*id calls change ids only as far as the capabilities allow (CAP_SETUID/CAP_SETGID, as Docker).
 */
// prettier-ignore
const PROCESSES = [
  'arch_prctl', 'capget', 'capset', 'chroot', 'execve', 'execveat', 'exit', 'exit_group', 'fork',
  'get_robust_list', 'get_thread_area', 'getcpu', 'getegid', 'geteuid', 'getgid', 'getgroups',
  'getitimer', 'getpgid', 'getpgrp', 'getpid', 'getppid', 'getpriority', 'getresgid', 'getresuid',
  'getrlimit', 'getrusage', 'getsid', 'gettid', 'getuid', 'ioprio_get', 'ioprio_set', 'pidfd_open',
  'prctl', 'prlimit64', 'rseq', 'sched_get_priority_max', 'sched_get_priority_min',
  'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_getscheduler',
  'sched_rr_get_interval', 'sched_setaffinity', 'sched_setattr', 'sched_setparam',
  'sched_setscheduler', 'sched_yield', 'seccomp', 'set_robust_list', 'set_thread_area',
  'set_tid_address', 'setfsgid', 'setfsuid', 'setgid', 'setgroups', 'setitimer', 'setpgid',
  'setpriority', 'setregid', 'setresgid', 'setresuid', 'setreuid', 'setrlimit', 'setsid', 'setuid',
  'sysinfo', 'uname', 'vfork', 'wait4', 'waitid', 'landlock_add_rule', 'landlock_create_ruleset',
  'landlock_restrict_self', 'restart_syscall',
]

/** Signals (to processes the kernel lets it signal: its own, in its PID namespace). */
// prettier-ignore
const SIGNALS = [
  'alarm', 'kill', 'pause', 'pidfd_send_signal', 'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask',
  'rt_sigqueueinfo', 'rt_sigreturn', 'rt_sigsuspend', 'rt_sigtimedwait', 'rt_tgsigqueueinfo',
  'sigaltstack', 'tgkill', 'tkill',
]

/** Reading clocks, sleeping, timers; futexes. */
// prettier-ignore
const TIME = [
  'clock_getres', 'clock_gettime', 'clock_nanosleep', 'futex',
  'futex_requeue', 'futex_wait', 'futex_waitv', 'futex_wake', 'gettimeofday', 'nanosleep', 'time',
  'timer_create', 'timer_delete', 'timer_getoverrun', 'timer_gettime', 'timer_settime', 'times',
]

/** System V IPC and POSIX message queues: namespaced (the sandbox has its own IPC namespace). */
// prettier-ignore
const IPC = [
  'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive', 'mq_timedsend', 'mq_unlink',
  'msgctl', 'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop', 'semtimedop', 'shmat',
  'shmctl', 'shmdt', 'shmget',
]

/** Socket calls on a socket it has (creating one is in SOCKET_FAMILIES). */
// prettier-ignore
const SOCKETS = [
  'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen',
  'recvfrom', 'recvmmsg', 'recvmsg', 'sendmmsg', 'sendmsg', 'sendto', 'setsockopt', 'shutdown',
  'socketpair',
]

/** `socket(family, ...)` for these families only: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK. */
const SOCKET_FAMILIES = [1, 2, 10, 16]

/**
 * `personality`: reading it (0xffffffff) and the Linux personalities runtimes set (PER_LINUX,
 * PER_LINUX32, each with UNAME26), as Docker allows; not the BSD/SVr4 emulations.
 */
const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]

/** CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET */
const CLONE_NAMESPACE_FLAGS = 0x7e020000

const allow = (names: readonly string[], comment: string): SeccompRule => ({
  names: [...names].sort(),
  action: 'SCMP_ACT_ALLOW',
  comment,
})

export const DEFAULT_SECCOMP_PROFILE: SeccompProfileFile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: EPERM,
  syscalls: [
    allow(FILES, 'files and directories'),
    allow(IO, 'descriptors and polling'),
    allow(MEMORY, 'own memory'),
    allow(PROCESSES, 'processes, threads, identity'),
    allow(SIGNALS, 'signals'),
    allow(TIME, 'clocks, sleeping, futexes'),
    allow(IPC, 'System V IPC, POSIX message queues'),
    allow(SOCKETS, 'sockets'),
    ...SOCKET_FAMILIES.map((family) => ({
      names: ['socket'],
      action: 'SCMP_ACT_ALLOW' as const,
      args: [{ index: 0, value: family, op: 'SCMP_CMP_EQ' as const }],
      comment: `socket family ${family}`,
    })),
    ...PERSONALITIES.map((persona) => ({
      names: ['personality'],
      action: 'SCMP_ACT_ALLOW' as const,
      args: [{ index: 0, value: persona, op: 'SCMP_CMP_EQ' as const }],
      comment: 'Linux personalities',
    })),
    {
      names: ['clone'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
      comment: 'threads and processes, no new namespaces',
    },
    {
      names: ['clone3'],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: ENOSYS,
      comment: 'flags out of reach of a filter: libc falls back to clone',
    },
  ],
}

/** How many distinct calls the profile allows (doctor reports it). */
export function allowedCallCount(profile: SeccompProfileFile): number {
  return new Set(profile.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW').flatMap((r) => r.names)).size
}
