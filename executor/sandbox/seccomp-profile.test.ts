import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { seccompProfileSchema } from '../../shared/seccomp.ts'
import { allowedCallCount, DEFAULT_SECCOMP_PROFILE } from './seccomp-profile.ts'

/** The calls Docker's documentation lists as blocked by its default profile (engine/security/seccomp). */
const DOCKER_DOCUMENTED_BLOCKED = [
  'acct',
  'add_key',
  'bpf',
  'clock_adjtime',
  'clock_settime',
  'create_module',
  'delete_module',
  'finit_module',
  'get_kernel_syms',
  'get_mempolicy',
  'init_module',
  'ioperm',
  'iopl',
  'kcmp',
  'kexec_file_load',
  'kexec_load',
  'keyctl',
  'lookup_dcookie',
  'mbind',
  'mount',
  'move_pages',
  'nfsservctl',
  'open_by_handle_at',
  'perf_event_open',
  'pivot_root',
  'process_vm_readv',
  'process_vm_writev',
  'ptrace',
  'query_module',
  'quotactl',
  'reboot',
  'request_key',
  'set_mempolicy',
  'setns',
  'settimeofday',
  'stime',
  'swapon',
  'swapoff',
  'sysfs',
  '_sysctl',
  'umount',
  'umount2',
  'unshare',
  'uselib',
  'userfaultfd',
  'ustat',
  'vm86',
  'vm86old',
]

const rules = DEFAULT_SECCOMP_PROFILE.syscalls
const unconditional = new Set(
  rules.filter((r) => r.action === 'SCMP_ACT_ALLOW' && !r.args).flatMap((r) => r.names),
)
const conditional = (name: string) => rules.filter((r) => r.names.includes(name) && r.args)

describe('the default seccomp profile', () => {
  test('is a valid profile: what a function could give as its own file', () => {
    assert.deepEqual(seccompProfileSchema.parse(DEFAULT_SECCOMP_PROFILE), DEFAULT_SECCOMP_PROFILE)
  })

  test('denies by default with EPERM, for the native architecture only', () => {
    assert.equal(DEFAULT_SECCOMP_PROFILE.defaultAction, 'SCMP_ACT_ERRNO')
    assert.equal(DEFAULT_SECCOMP_PROFILE.defaultErrnoRet, 1)
    assert.equal(DEFAULT_SECCOMP_PROFILE.architectures, undefined)
  })

  test("allows none of the calls Docker's documentation lists as blocked", () => {
    for (const name of DOCKER_DOCUMENTED_BLOCKED) {
      assert.ok(!unconditional.has(name), `${name} is allowed`)
      assert.deepEqual(conditional(name), [], `${name} is allowed under conditions`)
    }
    for (const name of [
      'io_uring_setup',
      'io_uring_enter',
      'fanotify_init',
      'syslog',
      'vhangup',
      'pidfd_getfd',
      'socketcall',
      'modify_ldt',
    ])
      assert.ok(!unconditional.has(name) && !conditional(name).length, `${name} is allowed`)
  })

  test('personality, socket and clone only with the documented arguments; clone3 answers ENOSYS', () => {
    assert.ok(
      !unconditional.has('personality') && !unconditional.has('socket') && !unconditional.has('clone'),
    )
    assert.deepEqual(
      conditional('socket').map((r) => r.args),
      [1, 2, 10, 16].map((family) => [{ index: 0, value: family, op: 'SCMP_CMP_EQ' }]),
    )
    const clone = conditional('clone')
    assert.equal(clone.length, 1)
    // Every CLONE_NEW* flag is in the mask: none may be set.
    const mask = clone[0]!.args![0]!.value
    for (const flag of [0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000])
      assert.equal(mask & flag, flag, `flag ${flag.toString(16)} not in the mask`)
    assert.deepEqual(clone[0]!.args, [{ index: 0, value: mask, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }])
    assert.deepEqual(
      rules.filter((r) => r.names.includes('clone3')).map((r) => [r.action, r.errnoRet]),
      [['SCMP_ACT_ERRNO', 38]],
    )
  })

  test('what every runtime needs is there; no call is listed twice', () => {
    for (const name of [
      'read',
      'write',
      'openat',
      'mmap',
      'futex',
      'epoll_wait',
      'execve',
      'getrandom',
      'rseq',
      'membarrier',
      'accept4',
      'exit_group',
      'rt_sigreturn',
    ])
      assert.ok(unconditional.has(name), `${name} is missing`)
    const listed = rules.filter((r) => !r.args && r.action === 'SCMP_ACT_ALLOW').flatMap((r) => r.names)
    assert.equal(new Set(listed).size, listed.length)
    assert.equal(allowedCallCount(DEFAULT_SECCOMP_PROFILE), unconditional.size + 3)
  })
})
