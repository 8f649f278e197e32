/** The request each sample function answers, and what its answer contains (benchmarks check it). */
export const SAMPLE_REQUESTS: Record<
  string,
  { method: string; path: string; body?: string; contains: string }
> = {
  'flask-table': { method: 'GET', path: '/?key=888888', contains: '{"value": 888888}' },
  'spring-greeting': { method: 'GET', path: '/', contains: 'Greetings from Spring Boot!' },
  'hello-node': { method: 'GET', path: '/', contains: '"message":"hello from node"' },
  'ts-compile': { method: 'POST', path: '/', body: 'let n: number = 1', contains: 'let n = 1;' },
}
