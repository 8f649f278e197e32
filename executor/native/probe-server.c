/*
 * initless self-test server: a tiny static HTTP/1.1 server used by `initless doctor` and the
 * platform tests to prove run -> checkpoint -> eager/lazy restore works on this host.
 * It fills PROBE_MB MiB of memory with a pattern at start-up (so a lazy restore has pages to fault
 * in) and answers every request with the pattern's checksum and a request counter, which shows
 * that memory and state survived the checkpoint.
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
  const char *mb_env = getenv("PROBE_MB");
  const char *port_env = getenv("PROBE_PORT");
  size_t mb = mb_env ? (size_t)atol(mb_env) : 16;
  int port = port_env ? atoi(port_env) : 8080;
  size_t len = mb * 1024 * 1024;
  unsigned char *mem = malloc(len ? len : 1);
  if (!mem) return 1;
  for (size_t i = 0; i < len; i++) mem[i] = (unsigned char)(i * 31 + 7);
  signal(SIGPIPE, SIG_IGN);

  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
  if (bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 128)) { perror("listen"); return 1; }
  printf("probe listening on %d with %zu MiB\n", port, mb);
  fflush(stdout);

  unsigned long requests = 0;
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    char buf[4096];
    ssize_t n = read(c, buf, sizeof buf - 1);
    if (n <= 0) { close(c); continue; }
    unsigned long sum = 0;
    for (size_t i = 0; i < len; i += 4096) sum += mem[i];
    char body[128];
    int blen = snprintf(body, sizeof body, "initless-probe ok requests=%lu sum=%lu\n", ++requests, sum);
    char out[256];
    int olen = snprintf(out, sizeof out,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                        blen, body);
    ssize_t w = write(c, out, olen);
    (void)w;
    close(c);
  }
}
