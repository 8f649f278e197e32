import assert from 'node:assert/strict'
import { test } from 'node:test'
import { isInitlessError } from '../../shared/errors.ts'
import { addressList, createCallbackPolicy } from './callback-target.ts'

const names: Record<string, string[]> = {
  'hooks.example': ['93.184.216.34'],
  'sneaky.example': ['93.184.216.34', '127.0.0.1'],
  'meta.example': ['169.254.169.254'],
}
const resolve = async (host: string) => {
  const found = names[host]
  if (!found) throw new Error('ENOTFOUND')
  return found
}

test('by default: public addresses yes; loopback, link-local, instance subnet, multicast no', () => {
  const p = createCallbackPolicy({ allow: [], instanceSubnets: ['10.213.0.0/16'], resolve })
  for (const a of ['93.184.216.34', '10.1.2.3', '192.168.1.10', '2001:db8::1'])
    assert.equal(p.isAllowed(a), true, a)
  for (const a of [
    '127.0.0.1',
    '127.9.9.9',
    '::1',
    '169.254.169.254',
    'fe80::1',
    '10.213.0.7',
    '0.0.0.0',
    '224.0.0.1',
    '::ffff:127.0.0.1',
    'localhost',
  ])
    assert.equal(p.isAllowed(a), false, a)
})

test('an allow-list permits only what it lists, loopback included when listed', () => {
  const p = createCallbackPolicy({
    allow: ['127.0.0.1/32', '10.213.5.0/24'],
    instanceSubnets: ['10.213.0.0/16'],
    resolve,
  })
  assert.equal(p.isAllowed('127.0.0.1'), true)
  assert.equal(p.isAllowed('127.0.0.2'), false)
  assert.equal(p.isAllowed('10.213.5.9'), true)
  assert.equal(p.isAllowed('93.184.216.34'), false)
})

test('check() refuses bad URLs and names resolving to a refused address, with ERR_ASYNC_CALLBACK_REFUSED', async () => {
  const p = createCallbackPolicy({ allow: [], instanceSubnets: ['10.213.0.0/16'], resolve })
  assert.equal((await p.check('https://hooks.example/done')).hostname, 'hooks.example')
  for (const url of [
    'not a url',
    'ftp://hooks.example/',
    'http://user:pw@hooks.example/',
    'http://127.0.0.1:8080/',
    'http://[::1]/',
    'http://meta.example/',
    'http://sneaky.example/',
    'http://nowhere.example/',
    'http://10.213.0.5/',
  ]) {
    await assert.rejects(
      p.check(url),
      (err: unknown) => isInitlessError(err, 'ERR_ASYNC_CALLBACK_REFUSED'),
      url,
    )
  }
})

test('the lookup used when sending filters refused addresses out', async () => {
  const p = createCallbackPolicy({ allow: [], instanceSubnets: [], resolve })
  const lookup = (host: string) =>
    new Promise<string>((res, rej) =>
      p.lookup(host, {}, (err, address) => (err ? rej(err) : res(address as string))),
    )
  assert.equal(await lookup('sneaky.example'), '93.184.216.34')
  await assert.rejects(lookup('meta.example'), /no allowed address/)
})

test('addressList rejects entries that are not addresses or CIDRs', () => {
  assert.throws(() => addressList(['example.com']), /not an IP address/)
  assert.throws(() => addressList(['10.0.0.0/33']), /prefix length/)
  assert.ok(addressList(['10.0.0.0/8', '::1', '127.0.0.1']).check('10.2.3.4'))
})
