import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  coveredWaiters,
  ewma,
  instancesToStart,
  pickInstance,
  type ReadyView,
  type ScaleInput,
} from './scaling.ts'

const r = (id: string, inflight: number, readyAt = 0): ReadyView => ({ id, inflight, readyAt })

describe('pickInstance', () => {
  const cases: { name: string; ready: ReadyView[]; concurrency: number; want: string | undefined }[] = [
    { name: 'no instances', ready: [], concurrency: 5, want: undefined },
    { name: 'one with room', ready: [r('a', 0)], concurrency: 1, want: 'a' },
    { name: 'one full', ready: [r('a', 1)], concurrency: 1, want: undefined },
    { name: 'least loaded wins', ready: [r('a', 3), r('b', 1), r('c', 2)], concurrency: 5, want: 'b' },
    { name: 'full ones skipped', ready: [r('a', 5), r('b', 4)], concurrency: 5, want: 'b' },
    { name: 'all full', ready: [r('a', 5), r('b', 5)], concurrency: 5, want: undefined },
    { name: 'tie: older ready first', ready: [r('a', 1, 20), r('b', 1, 10)], concurrency: 5, want: 'b' },
    { name: 'tie: then by id', ready: [r('b', 0, 10), r('a', 0, 10)], concurrency: 5, want: 'a' },
    { name: 'over-full (concurrency lowered)', ready: [r('a', 9)], concurrency: 5, want: undefined },
  ]
  for (const c of cases) {
    test(c.name, () => assert.equal(pickInstance(c.ready, c.concurrency)?.id, c.want))
  }
})

describe('instancesToStart', () => {
  const load = (...inflight: number[]) => inflight.map((n) => ({ inflight: n }))
  // spring-greeting in a burst: restores of ~190 ms, ~9 ms per request, 50 per instance.
  const fast = { concurrency: 50, maxInstances: 5, restoreMs: 190, serviceMs: 9 }
  const cases: { name: string; input: ScaleInput; want: number }[] = [
    {
      name: 'nothing waiting',
      input: { ready: [], starting: 0, waiting: 0, concurrency: 1, maxInstances: 5 },
      want: 0,
    },
    {
      name: 'cold: first request starts one',
      input: { ready: [], starting: 0, waiting: 1, concurrency: 10, maxInstances: 5 },
      want: 1,
    },
    {
      name: 'cold: one starting covers the waiters',
      input: { ready: [], starting: 1, waiting: 10, concurrency: 10, maxInstances: 5 },
      want: 0,
    },
    {
      name: 'cold: the 11th waiter needs a second instance',
      input: { ready: [], starting: 1, waiting: 11, concurrency: 10, maxInstances: 5 },
      want: 1,
    },
    {
      name: 'burst: 100 waiting, concurrency 10, max 10',
      input: { ready: [], starting: 0, waiting: 100, concurrency: 10, maxInstances: 10 },
      want: 10,
    },
    {
      name: 'burst capped by maxInstances',
      input: { ready: [], starting: 0, waiting: 100, concurrency: 10, maxInstances: 4 },
      want: 4,
    },
    {
      name: 'at maxInstances: nothing more',
      input: { ready: load(1, 1), starting: 1, waiting: 50, concurrency: 1, maxInstances: 3 },
      want: 0,
    },
    {
      name: 'warm and full: one more',
      input: { ready: load(1), starting: 0, waiting: 1, concurrency: 1, maxInstances: 3 },
      want: 1,
    },
    {
      name: 'in-flight counts as demand',
      input: { ready: load(10, 10), starting: 0, waiting: 5, concurrency: 10, maxInstances: 5 },
      want: 1,
    },
    {
      name: 'free slots absorb the waiters',
      input: { ready: load(2, 3), starting: 0, waiting: 5, concurrency: 5, maxInstances: 5 },
      want: 0,
    },
    {
      name: 'exact fit needs no start',
      input: { ready: load(5), starting: 1, waiting: 5, concurrency: 5, maxInstances: 5 },
      want: 0,
    },
    {
      name: 'concurrency 1: one per waiter',
      input: { ready: [], starting: 2, waiting: 5, concurrency: 1, maxInstances: 10 },
      want: 3,
    },
    {
      name: 'drain: unknown restore time, slots rule',
      input: { ready: [], starting: 0, waiting: 200, concurrency: 50, maxInstances: 5, serviceMs: 9 },
      want: 4,
    },
    {
      name: 'drain: one instance answers 200 within a restore time',
      input: { ...fast, ready: [], starting: 0, waiting: 200 },
      want: 1,
    },
    {
      name: 'drain: the one starting is enough',
      input: { ...fast, ready: [], starting: 1, waiting: 200 },
      want: 0,
    },
    {
      name: 'drain: a first instance even for one quick request',
      input: { ...fast, ready: [], starting: 0, waiting: 1, serviceMs: 0.1 },
      want: 1,
    },
    {
      name: 'drain: saturated, slower answers, still drained in time',
      input: { ...fast, ready: load(50), starting: 0, waiting: 150, serviceMs: 60 },
      want: 0,
    },
    {
      name: 'drain: saturated and slow: one more',
      input: { ...fast, ready: load(16), starting: 0, waiting: 184, concurrency: 16, serviceMs: 50 },
      want: 1,
    },
    {
      name: 'drain: saturated and slower: up to maxInstances',
      input: {
        ...fast,
        ready: load(16),
        starting: 0,
        waiting: 184,
        concurrency: 16,
        maxInstances: 3,
        serviceMs: 150,
      },
      want: 2,
    },
    {
      name: 'drain: slow requests need what the slots need',
      input: {
        ready: [],
        starting: 0,
        waiting: 10,
        concurrency: 1,
        maxInstances: 20,
        restoreMs: 200,
        serviceMs: 1000,
      },
      want: 10,
    },
    {
      name: 'drain: between the two',
      input: { ...fast, ready: [], starting: 0, waiting: 200, serviceMs: 200 },
      want: 2,
    },
    {
      // A burst as measured: one instance drains it in ~160 ms, two restore times of 75 ms.
      name: 'drain: fast restores, a queue two restore times long: still one',
      input: { ...fast, ready: [], starting: 0, waiting: 200, restoreMs: 75, serviceMs: 40 },
      want: 1,
    },
  ]
  for (const c of cases) test(c.name, () => assert.equal(instancesToStart(c.input), c.want))
})

describe('ewma', () => {
  test('the first sample is taken as is', () => assert.equal(ewma(undefined, 40, 0.2), 40))
  test('later samples move it by their weight', () => assert.equal(ewma(40, 90, 0.2), 50))
})

describe('coveredWaiters', () => {
  const cases: { name: string; input: Parameters<typeof coveredWaiters>[0]; want: number }[] = [
    { name: 'nothing', input: { ready: [], starting: 0, concurrency: 5 }, want: 0 },
    { name: 'starting instances cover', input: { ready: [], starting: 2, concurrency: 5 }, want: 10 },
    {
      name: 'in-flight uses slots',
      input: { ready: [{ inflight: 4 }], starting: 1, concurrency: 5 },
      want: 6,
    },
    { name: 'never negative', input: { ready: [{ inflight: 9 }], starting: 0, concurrency: 5 }, want: 0 },
  ]
  for (const c of cases) test(c.name, () => assert.equal(coveredWaiters(c.input), c.want))
})
