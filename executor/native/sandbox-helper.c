/*
 * initless sandbox helper: the sandbox set-up steps that would otherwise cost one process start
 * each (`ip -batch` twice and `mount` per sandbox, 5-20 ms apiece on a VM), done with system calls
 * by one long-lived process the executor starts once (executor/adapters/sandbox-helper.ts).
 *
 * Protocol, on stdin/stdout, one request per line, fields separated by tabs:
 *   <tag> netns-create <nsfile> <veth> <mac> <ip>/<bits> <gateway> <bridge>
 *   <tag> netns-delete <nsfile> <veth>
 *   <tag> mount-overlay <target> <options>
 *   <tag> mount-tmpfs <target> <options>      (nosuid, nodev; options such as size=, mode=)
 *   <tag> umount <target>
 *   <tag> mkdir <dir>...                       (an existing one is fine)
 *   <tag> write <file> <value> <optional>...   (triples; optional 1: a missing file is skipped)
 *   <tag> device-filter <cgroup dir> <rule>...  (attach a cgroup v2 device filter, see below)
 *   <tag> device-filter-check <rule>...         (build and load it only: is it available here?)
 *   <tag> spawn <group|session> <output> <fd3|-|status> <program> <args...>
 *   <tag> ping
 * Every request gets one answer line: `<tag> ok` (spawn: `<tag> pid <pid>`) or
 * `<tag> err <errno> <message>`. Requests are served in order, one at a time. A spawned process
 * gets /dev/null as stdin, <output> (opened for appending, created 0600) as stdout and stderr, <fd3>
 * opened read-only as fd 3 unless `-`, its own process group or session, the helper's
 * environment, and transparent huge pages disabled (below); when it exits the helper writes
 * `<tag> exit <code> <signal>` (code -1 if killed). With `status` for <fd3>, fd 3 is the write end
 * of a pipe (CRIU's --status-fd): the helper writes `<tag> ready` when the process writes a byte
 * to it, or `<tag> unready` when it closes the pipe (or exits) without one, before any exit line.
 * Spawning here, with posix_spawn from a small process, blocks nothing: node's spawn() stops the
 * executor's event loop for 12-20 ms per process on this VM class (fork of a large process).
 * The process exits at end of input (its children live on), or if it could not return to the
 * executor's network namespace after creating one (it answers first).
 *
 * netns-create does what `ip netns add` plus the executor's two `ip -batch` scripts did: a named
 * network namespace bound at <nsfile>, a veth pair whose inner end is eth0 (with <mac>) inside it and
 * whose outer end <veth> is up on <bridge>, and inside: lo up, <ip>/<bits> on eth0, eth0 up, a default
 * route via <gateway>. It answers once the pair passes frames (links_settle: both ends and the
 * bridge operationally up, the bridge port forwarding) and the host holds no neighbour entry for
 * <ip> left from its previous holder (neigh_forget): the first packet to the instance is not lost
 * and waits for no ARP retry.
 * On failure nothing of it is left behind.
 *
 * device-filter gives a cgroup v2 cgroup what cgroup v1's devices.deny `a` followed by one
 * devices.allow per <rule> gives a v1 cgroup: a BPF_PROG_TYPE_CGROUP_DEVICE program that denies
 * every device access no rule allows, attached to the cgroup's directory with BPF_F_ALLOW_MULTI
 * (programs on its ancestors keep applying: an access passes only if all of them allow it). A
 * <rule> is written as for devices.allow: `<c|b> <major|*>:<minor|*> <access>`, access made of r
 * (open for reading), w (open for writing) and m (mknod). The helper keeps no reference to the
 * program: the cgroup holds it, and removing the cgroup releases it.
 *
 * The helper runs with transparent huge pages disabled (PR_SET_THP_DISABLE), which every process it
 * spawns inherits across fork and exec: what it spawns is CRIU. A lazy restore premaps each private
 * area, writes the pages it restores eagerly into it and registers the rest with userfaultfd. Where
 * THP is `always` (Debian's kernels), writing one page into a 2 MiB-aligned stretch of the premapped
 * area faults in a whole zero-filled huge page: the lazy pages in that stretch are then present, no
 * fault ever reaches the lazy-pages daemon, and the restored process reads zeros where its memory
 * was (Node.js segfaults at once). CRIU's restorer gives the restored tasks their own checkpointed
 * setting back before they resume.
 *
 * Build: the Makefile beside it, driven by scripts/build-native.sh (provisioning, the image build).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <linux/if.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <linux/veth.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FIELDS 512

extern char **environ;

/* ------------------------------------------------------------------------------------------ */
/* Errors: the first failure of a request, with errno and a message naming the step. */

static int err_no;
static char err_msg[512];

static int fail(int e, const char *fmt, ...) {
  if (err_no) return -1; /* keep the first (root) cause */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_msg, sizeof err_msg, fmt, ap);
  va_end(ap);
  err_no = e ? e : EIO;
  size_t n = strlen(err_msg);
  snprintf(err_msg + n, sizeof err_msg - n, ": %s", strerror(err_no));
  return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* rtnetlink: build a message with nested attributes, send it, wait for its acknowledgement. */

struct nlreq {
  struct nlmsghdr *hdr;
  char buf[2048];
};

static uint32_t nl_seq;

static void nl_init(struct nlreq *r, uint16_t type, uint16_t flags, const void *body, size_t len) {
  memset(r->buf, 0, sizeof r->buf);
  r->hdr = (struct nlmsghdr *)r->buf;
  r->hdr->nlmsg_type = type;
  r->hdr->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
  r->hdr->nlmsg_len = NLMSG_LENGTH(len);
  memcpy(NLMSG_DATA(r->hdr), body, len);
}

static struct rtattr *nl_attr(struct nlreq *r, uint16_t type, const void *data, size_t len) {
  size_t at = NLMSG_ALIGN(r->hdr->nlmsg_len);
  if (at + RTA_SPACE(len) > sizeof r->buf) {
    fprintf(stderr, "sandbox-helper: netlink message too large\n");
    exit(2);
  }
  struct rtattr *a = (struct rtattr *)(r->buf + at);
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(len);
  if (len) memcpy(RTA_DATA(a), data, len);
  r->hdr->nlmsg_len = at + RTA_SPACE(len);
  return a;
}

static void nl_str(struct nlreq *r, uint16_t type, const char *s) { nl_attr(r, type, s, strlen(s) + 1); }

static void nl_u32(struct nlreq *r, uint16_t type, uint32_t v) { nl_attr(r, type, &v, sizeof v); }

static struct rtattr *nl_nest(struct nlreq *r, uint16_t type) { return nl_attr(r, type, NULL, 0); }

static void nl_nest_end(struct nlreq *r, struct rtattr *nest) {
  nest->rta_len = (unsigned short)(r->buf + r->hdr->nlmsg_len - (char *)nest);
}

/* A handler of the kernel's answers to a request before its ack (a GET's reply). */
typedef void (*nl_reply_fn)(const struct nlmsghdr *h, void *arg);

/* Send and wait for the ack, passing other answers to `on_reply`; returns 0 or a positive errno. */
static int nl_talk_reply(int fd, struct nlreq *r, nl_reply_fn on_reply, void *arg) {
  r->hdr->nlmsg_seq = ++nl_seq;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(fd, r->buf, r->hdr->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return errno;
  static char reply[32768]; /* a link's whole description (RTM_GETLINK) fits */
  for (;;) {
    ssize_t n = recv(fd, reply, sizeof reply, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->hdr->nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        return -e->error;
      }
      if (on_reply) on_reply(h, arg);
    }
  }
}

static int nl_talk(int fd, struct nlreq *r) { return nl_talk_reply(fd, r, NULL, NULL); }

static int nl_open(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return -1;
  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int if_index(int sock, const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
  strcpy(ifr.ifr_name, name);
  if (ioctl(sock, SIOCGIFINDEX, &ifr) < 0) return -errno;
  return ifr.ifr_ifindex;
}

static int link_up(int nl, int index) {
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
  struct nlreq r;
  nl_init(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
  return nl_talk(nl, &r);
}

static int link_delete(int nl, const char *name) {
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  struct nlreq r;
  nl_init(&r, RTM_DELLINK, 0, &ifi, sizeof ifi);
  nl_str(&r, IFLA_IFNAME, name);
  return nl_talk(nl, &r);
}

/* ------------------------------------------------------------------------------------------ */
/* The executor's own network namespace, and netlink/ioctl sockets in it. */

static int host_ns = -1, host_nl = -1, host_sock = -1;

/*
 * What the kernel does with a link's frames right now. The veth's host end comes up while eth0 is
 * still down, without a carrier, and the kernel then leaves its transmit queue on the noop queueing
 * discipline, which drops every frame. eth0 going up turns the carrier of both ends on, but the
 * host end's queue is activated (and its operational state set) only when the kernel's link watch
 * handles that change: until then every frame the bridge sends to the instance is dropped. The
 * bridge's own carrier follows its ports' (off while none forwards, as after the last instance
 * went), and its queue likewise waits for the link watch. The link watch runs in a kernel worker
 * that needs the RTNL lock, which every link and namespace change on the host takes (deleting a
 * veth holds it through an RCU grace period): a packet sent in between is lost, and the first one
 * is the host's ARP request for the instance, retried only after 1 s (retrans_time_ms).
 * RTM_GETLINK runs a link's pending link-watch work itself, under RTNL, before it answers (Linux >=
 * 6.8); older kernels answer at once, and the state is asked again until the work has run.
 */
struct link_state {
  int operstate;    /* IF_OPER_*, -1 if not reported */
  int brport_state; /* BR_STATE_* of a bridge port, -1 if not one */
};

/* The attribute `type` in the `len` bytes at `a`, or NULL. */
static const struct rtattr *rta_find(const struct rtattr *a, int len, unsigned short type) {
  for (; RTA_OK(a, len); a = RTA_NEXT(a, len))
    if ((a->rta_type & NLA_TYPE_MASK) == type) return a;
  return NULL;
}

static void read_link_state(const struct nlmsghdr *h, void *arg) {
  struct link_state *st = arg;
  if (h->nlmsg_type != RTM_NEWLINK) return;
  const struct ifinfomsg *ifi = NLMSG_DATA(h);
  const struct rtattr *attrs = IFLA_RTA(ifi);
  int len = (int)IFLA_PAYLOAD(h);
  const struct rtattr *oper = rta_find(attrs, len, IFLA_OPERSTATE);
  if (oper && RTA_PAYLOAD(oper) >= 1) st->operstate = *(const unsigned char *)RTA_DATA(oper);
  const struct rtattr *info = rta_find(attrs, len, IFLA_LINKINFO);
  const struct rtattr *slave = info ? rta_find(RTA_DATA(info), (int)RTA_PAYLOAD(info), IFLA_INFO_SLAVE_DATA) : NULL;
  const struct rtattr *port = slave ? rta_find(RTA_DATA(slave), (int)RTA_PAYLOAD(slave), IFLA_BRPORT_STATE) : NULL;
  if (port && RTA_PAYLOAD(port) >= 1) st->brport_state = *(const unsigned char *)RTA_DATA(port);
}

/* RTM_GETLINK of the link `index` (see above: it also settles the link's carrier change). */
static int link_state(int nl, int index, struct link_state *st) {
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index};
  struct nlreq r;
  nl_init(&r, RTM_GETLINK, 0, &ifi, sizeof ifi);
  st->operstate = st->brport_state = -1;
  return nl_talk_reply(nl, &r, read_link_state, st);
}

/* How long a new veth pair may take to pass frames before netns-create gives up. */
#define LINK_SETTLE_MS 2000

/*
 * Wait until eth0 (`eth0` in the namespace of `ns_nl`), its peer `veth` and the bridge pass frames:
 * all three operationally up, the bridge port forwarding. In this order: the port's change is what
 * turns the bridge's carrier on. On Linux >= 6.8 the first look settles all three.
 */
static int links_settle(int ns_nl, int eth0, int veth_index, const char *veth, int bridge_index) {
  struct link_state in = {-1, -1}, out = {-1, -1}, br = {-1, -1};
  for (int waited = 0;; waited++) {
    int e = link_state(ns_nl, eth0, &in);
    if (e) return fail(e, "read the state of eth0");
    if ((e = link_state(host_nl, veth_index, &out))) return fail(e, "read the state of %s", veth);
    if ((e = link_state(host_nl, bridge_index, &br))) return fail(e, "read the state of the bridge");
    if (in.operstate == IF_OPER_UP && out.operstate == IF_OPER_UP && out.brport_state == BR_STATE_FORWARDING &&
        br.operstate == IF_OPER_UP)
      return 0;
    if (waited >= LINK_SETTLE_MS) break;
    usleep(1000);
  }
  return fail(ETIMEDOUT,
              "eth0, %s and the bridge pass no frames after %d ms (operational states %d, %d and %d; "
              "bridge port state %d)",
              veth, LINK_SETTLE_MS, in.operstate, out.operstate, br.operstate, out.brport_state);
}

/*
 * Forget what the host knows about `ip` on the bridge. Addresses are reused, and the host may still
 * be resolving one for its previous holder: traffic that outlived it (a connection closed after the
 * instance went, whose FIN the host retransmits for tens of seconds) keeps its neighbour entry cycling
 * through INCOMPLETE, three ARP requests one second apart. A packet to an INCOMPLETE entry only
 * queues behind the next request: a new instance's first connection would wait up to 1 s although
 * it answers at once. Without an entry the next packet starts a resolution with an immediate request,
 * which the instance answers. Called once its links pass frames; ENOENT (no entry) is the usual case.
 */
static int neigh_forget(int nl, int index, struct in_addr ip) {
  struct ndmsg ndm = {.ndm_family = AF_INET, .ndm_ifindex = index};
  struct nlreq r;
  nl_init(&r, RTM_DELNEIGH, 0, &ndm, sizeof ndm);
  nl_attr(&r, NDA_DST, &ip, sizeof ip);
  int e = nl_talk(nl, &r);
  return e == ENOENT ? 0 : e;
}

static int parse_mac(const char *s, unsigned char mac[6]) {
  unsigned int b[6];
  char end;
  if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &end) != 6) return -1;
  for (int i = 0; i < 6; i++) mac[i] = (unsigned char)b[i];
  return 0;
}

/* Like `ip netns add`: the directory holding namespace files is a shared mount of its own. */
static int ensure_netns_dir(const char *nsfile) {
  static int done;
  if (done) return 0;
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", nsfile);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return fail(EINVAL, "namespace file %s is not in a directory", nsfile);
  *slash = 0;
  if (mkdir(dir, 0755) < 0 && errno != EEXIST) return fail(errno, "mkdir %s", dir);
  while (mount("", dir, "none", MS_SHARED | MS_REC, NULL) < 0) {
    if (errno != EINVAL) return fail(errno, "make %s a shared mount", dir);
    /* Not a mount point yet: bind it onto itself, then make it shared. */
    if (mount(dir, dir, "none", MS_BIND | MS_REC, NULL) < 0) return fail(errno, "bind %s onto itself", dir);
  }
  done = 1;
  return 0;
}

static int netns_create(char **f, int n) {
  (void)n;
  const char *nsfile = f[0], *veth = f[1], *macs = f[2], *cidr = f[3], *gws = f[4], *bridge = f[5];
  unsigned char mac[6];
  struct in_addr ip, gw;
  char ipbuf[32];
  int bits;
  if (parse_mac(macs, mac) < 0) return fail(EINVAL, "bad MAC %s", macs);
  if (snprintf(ipbuf, sizeof ipbuf, "%s", cidr) >= (int)sizeof ipbuf) return fail(EINVAL, "bad address %s", cidr);
  char *slash = strchr(ipbuf, '/');
  if (!slash) return fail(EINVAL, "bad address %s (want ip/bits)", cidr);
  *slash = 0;
  bits = atoi(slash + 1);
  if (inet_pton(AF_INET, ipbuf, &ip) != 1 || bits < 1 || bits > 32) return fail(EINVAL, "bad address %s", cidr);
  if (inet_pton(AF_INET, gws, &gw) != 1) return fail(EINVAL, "bad gateway %s", gws);
  if (strlen(veth) >= IFNAMSIZ) return fail(EINVAL, "veth name %s too long", veth);
  int bridge_index = if_index(host_sock, bridge);
  if (bridge_index < 0) return fail(-bridge_index, "bridge %s", bridge);
  if (ensure_netns_dir(nsfile) < 0) return -1;

  int fd = open(nsfile, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (fd < 0) return fail(errno, "create %s", nsfile);
  close(fd);

  int ns_fd = -1, ns_nl = -1, ns_sock = -1, mounted = 0, veth_made = 0;
  if (unshare(CLONE_NEWNET) < 0) {
    fail(errno, "unshare a network namespace");
    goto undo;
  }
  /* In the new namespace until setns below: everything opened here belongs to it. */
  ns_nl = nl_open();
  if (ns_nl < 0) fail(errno, "netlink socket in the new namespace");
  if (!err_no && (ns_sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) fail(errno, "socket in the new namespace");
  if (!err_no && (ns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) fail(errno, "open the new namespace");
  if (!err_no) {
    if (mount("/proc/self/ns/net", nsfile, "none", MS_BIND, NULL) < 0) fail(errno, "bind the namespace at %s", nsfile);
    else mounted = 1;
  }
  if (setns(host_ns, CLONE_NEWNET) < 0) {
    fail(errno, "return to the executor's network namespace");
    return -2; /* main answers, then exits: its sockets are no longer the executor's */
  }
  if (err_no) goto undo;

  {
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    struct nlreq r;
    nl_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof ifi);
    nl_str(&r, IFLA_IFNAME, veth);
    nl_u32(&r, IFLA_MASTER, (uint32_t)bridge_index);
    struct rtattr *info = nl_nest(&r, IFLA_LINKINFO);
    nl_str(&r, IFLA_INFO_KIND, "veth");
    struct rtattr *data = nl_nest(&r, IFLA_INFO_DATA);
    struct rtattr *peer = nl_nest(&r, VETH_INFO_PEER);
    struct ifinfomsg peer_ifi = {.ifi_family = AF_UNSPEC};
    /* The peer's ifinfomsg comes first in VETH_INFO_PEER, then its attributes. */
    r.hdr->nlmsg_len += NLMSG_ALIGN(sizeof peer_ifi);
    memcpy((char *)RTA_DATA(peer), &peer_ifi, sizeof peer_ifi);
    nl_str(&r, IFLA_IFNAME, "eth0");
    nl_attr(&r, IFLA_ADDRESS, mac, 6);
    nl_u32(&r, IFLA_NET_NS_FD, (uint32_t)ns_fd);
    nl_nest_end(&r, peer);
    nl_nest_end(&r, data);
    nl_nest_end(&r, info);
    int e = nl_talk(host_nl, &r);
    if (e) {
      fail(e, "create veth %s on %s", veth, bridge);
      goto undo;
    }
    veth_made = 1;
  }

  {
    int lo = if_index(ns_sock, "lo"), eth0 = if_index(ns_sock, "eth0");
    if (lo < 0 || eth0 < 0) {
      fail(lo < 0 ? -lo : -eth0, "find %s in the new namespace", lo < 0 ? "lo" : "eth0");
      goto undo;
    }
    int e = link_up(ns_nl, lo);
    if (e) {
      fail(e, "set lo up");
      goto undo;
    }
    struct ifaddrmsg ifa = {
        .ifa_family = AF_INET, .ifa_prefixlen = (unsigned char)bits, .ifa_scope = RT_SCOPE_UNIVERSE, .ifa_index = (unsigned)eth0};
    struct nlreq r;
    nl_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
    nl_attr(&r, IFA_LOCAL, &ip, 4);
    nl_attr(&r, IFA_ADDRESS, &ip, 4);
    if ((e = nl_talk(ns_nl, &r))) {
      fail(e, "add %s to eth0", cidr);
      goto undo;
    }
    if ((e = link_up(ns_nl, eth0))) {
      fail(e, "set eth0 up");
      goto undo;
    }
    struct rtmsg rtm = {.rtm_family = AF_INET,
                        .rtm_table = RT_TABLE_MAIN,
                        .rtm_protocol = RTPROT_BOOT,
                        .rtm_scope = RT_SCOPE_UNIVERSE,
                        .rtm_type = RTN_UNICAST};
    nl_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rtm, sizeof rtm);
    nl_attr(&r, RTA_GATEWAY, &gw, 4);
    nl_u32(&r, RTA_OIF, (uint32_t)eth0);
    if ((e = nl_talk(ns_nl, &r))) {
      fail(e, "add a default route via %s", gws);
      goto undo;
    }
    int veth_index = if_index(host_sock, veth);
    if (veth_index < 0) {
      fail(-veth_index, "find %s", veth);
      goto undo;
    }
    if (links_settle(ns_nl, eth0, veth_index, veth, bridge_index) < 0) goto undo;
    if ((e = neigh_forget(host_nl, bridge_index, ip))) {
      fail(e, "forget the host's neighbour entry for %s", ipbuf);
      goto undo;
    }
  }
  close(ns_fd);
  close(ns_nl);
  close(ns_sock);
  return 0;

undo:
  if (veth_made) link_delete(host_nl, veth);
  if (mounted) umount2(nsfile, MNT_DETACH);
  unlink(nsfile);
  if (ns_fd >= 0) close(ns_fd);
  if (ns_nl >= 0) close(ns_nl);
  if (ns_sock >= 0) close(ns_sock);
  return -1;
}

/* Like `ip netns del` followed by `ip link del`: both parts may be gone already. */
static int netns_delete(char **f, int n) {
  (void)n;
  const char *nsfile = f[0], *veth = f[1];
  if (umount2(nsfile, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) return fail(errno, "unmount %s", nsfile);
  if (unlink(nsfile) < 0 && errno != ENOENT) return fail(errno, "remove %s", nsfile);
  /* The namespace's end takes the pair with it, but only once nothing holds the namespace. */
  int e = link_delete(host_nl, veth);
  if (e && e != ENODEV) return fail(e, "delete veth %s", veth);
  return 0;
}

static int mount_overlay(char **f, int n) {
  (void)n;
  if (mount("overlay", f[0], "overlay", 0, f[1]) < 0) return fail(errno, "mount overlay at %s", f[0]);
  return 0;
}

/* The instance's writable layer: a tmpfs whose size= bounds what the function can write. */
static int mount_tmpfs(char **f, int n) {
  (void)n;
  if (mount("tmpfs", f[0], "tmpfs", MS_NOSUID | MS_NODEV, f[1]) < 0) return fail(errno, "mount tmpfs at %s", f[0]);
  return 0;
}

/* Unmount; detach lazily if busy. Not mounted (or missing) is fine: cleanup is idempotent. */
static int do_umount(char **f, int n) {
  (void)n;
  if (umount2(f[0], 0) == 0 || errno == EINVAL || errno == ENOENT) return 0;
  if (errno == EBUSY && (umount2(f[0], MNT_DETACH) == 0 || errno == EINVAL)) return 0;
  return fail(errno, "unmount %s", f[0]);
}

/* ------------------------------------------------------------------------------------------ */
/* Spawned processes: their tags, to report their exits. */

struct child {
  pid_t pid;
  /* The read end of its status pipe until the process reported on it; -1 without one. */
  int status_fd;
  char tag[32];
};
static struct child *children;
static size_t nchildren, children_cap;

static int do_spawn(const char *tag, char **f, int n, pid_t *pid) {
  const char *mode = f[0], *output = f[1], *fd3 = f[2];
  if (n < 4) return fail(EINVAL, "spawn takes <group|session> <output> <fd3|-> <program> [args]");
  if (strcmp(mode, "group") && strcmp(mode, "session")) return fail(EINVAL, "bad spawn mode %s", mode);
  if (strlen(tag) >= sizeof children[0].tag) return fail(EINVAL, "tag too long");
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, output, O_WRONLY | O_APPEND | O_CREAT, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  int status[2] = {-1, -1};
  if (!strcmp(fd3, "status")) {
    if (pipe2(status, O_CLOEXEC) < 0) {
      posix_spawn_file_actions_destroy(&fa);
      posix_spawnattr_destroy(&attr);
      return fail(errno, "status pipe");
    }
    posix_spawn_file_actions_adddup2(&fa, status[1], 3); /* dup2 clears O_CLOEXEC on fd 3 */
  } else if (strcmp(fd3, "-")) {
    posix_spawn_file_actions_addopen(&fa, 3, fd3, O_RDONLY, 0);
  }
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none); /* the helper blocks SIGCHLD (signalfd) */
  posix_spawnattr_setsigdefault(&attr, &all);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (!strcmp(mode, "session")) {
    flags |= POSIX_SPAWN_SETSID;
  } else {
    flags |= POSIX_SPAWN_SETPGROUP;
    posix_spawnattr_setpgroup(&attr, 0);
  }
  posix_spawnattr_setflags(&attr, flags);
  char **argv = f + 3;
  argv[n - 3] = NULL;
  int rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (status[1] >= 0) close(status[1]); /* the process holds the write end now */
  if (rc && status[0] >= 0) close(status[0]);
  if (rc) {
    int has_fd3 = strcmp(fd3, "-") != 0;
    return fail(rc, "spawn %s (output %s%s%s)", argv[0], output, has_fd3 ? ", fd 3 " : "", has_fd3 ? fd3 : "");
  }
  if (nchildren == children_cap) {
    children_cap = children_cap ? children_cap * 2 : 64;
    children = realloc(children, children_cap * sizeof *children);
    if (!children) {
      fprintf(stderr, "sandbox-helper: out of memory\n");
      exit(2);
    }
  }
  children[nchildren].pid = *pid;
  children[nchildren].status_fd = status[0];
  snprintf(children[nchildren].tag, sizeof children[nchildren].tag, "%s", tag);
  nchildren++;
  return 0;
}

/* Read child c's status pipe, which poll found readable or closed, and report what it held. */
static void report_status(struct child *c) {
  char byte;
  ssize_t got;
  do got = read(c->status_fd, &byte, 1);
  while (got < 0 && errno == EINTR);
  printf("%s\t%s\n", c->tag, got == 1 ? "ready" : "unready");
  close(c->status_fd);
  c->status_fd = -1;
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (size_t i = 0; i < nchildren; i++) {
      if (children[i].pid != pid) continue;
      /* Its pipe's write end is closed with it: the byte, if any, is already there. */
      if (children[i].status_fd >= 0) report_status(&children[i]);
      printf("%s\texit\t%d\t%d\n", children[i].tag, WIFEXITED(status) ? WEXITSTATUS(status) : -1,
             WIFSIGNALED(status) ? WTERMSIG(status) : 0);
      children[i] = children[--nchildren];
      break;
    }
  }
  fflush(stdout);
}

static int do_mkdirs(char **f, int n) {
  for (int i = 0; i < n; i++)
    if (mkdir(f[i], 0755) < 0 && errno != EEXIST) return fail(errno, "mkdir %s", f[i]);
  return 0;
}

/* Each value in one write(2), as cgroup files want (a device rule per write). */
static int do_writes(char **f, int n) {
  if (n % 3) return fail(EINVAL, "write takes <file> <value> <optional> triples");
  for (int i = 0; i < n; i += 3) {
    int fd = open(f[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT && !strcmp(f[i + 2], "1")) continue;
      return fail(errno, "open %s", f[i]);
    }
    size_t len = strlen(f[i + 1]);
    ssize_t w = write(fd, f[i + 1], len);
    int e = errno;
    close(fd);
    if (w < 0) return fail(e, "write %s to %s", f[i + 1], f[i]);
    if ((size_t)w != len) return fail(EIO, "short write of %s to %s", f[i + 1], f[i]);
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* cgroup v2 device filter (see the top): rules parsed, compiled to eBPF, loaded, attached. */

#define DEV_ANY (-1L)
#define MAX_DEV_RULES 64
/* The kernel's device numbers: 12 bits of major, 20 of minor (MINORBITS). */
#define MAX_MAJOR 0xfffL
#define MAX_MINOR 0xfffffL
#define DEV_ACC_ALL (BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD)

struct dev_rule {
  int32_t type;   /* BPF_DEVCG_DEV_CHAR or BPF_DEVCG_DEV_BLOCK */
  int32_t access; /* BPF_DEVCG_ACC_* bits */
  long major, minor; /* DEV_ANY for `*` */
};

/* A device number or `*`, then the character `stop`; advances *p past both. */
static int parse_dev_number(const char **p, char stop, long max, long *out) {
  const char *s = *p;
  if (*s == '*') {
    *out = DEV_ANY;
    s++;
  } else {
    long v = 0;
    if (*s < '0' || *s > '9') return -1;
    for (; *s >= '0' && *s <= '9'; s++)
      if ((v = v * 10 + (*s - '0')) > max) return -1;
    *out = v;
  }
  if (*s != stop) return -1;
  *p = s + 1;
  return 0;
}

/* `<c|b> <major|*>:<minor|*> <access>`, exactly as cgroup v1's devices.allow takes it. */
static int parse_dev_rule(const char *text, struct dev_rule *r) {
  const char *p = text;
  if ((p[0] != 'c' && p[0] != 'b') || p[1] != ' ') goto bad;
  r->type = p[0] == 'c' ? BPF_DEVCG_DEV_CHAR : BPF_DEVCG_DEV_BLOCK;
  p += 2;
  if (parse_dev_number(&p, ':', MAX_MAJOR, &r->major) < 0 || parse_dev_number(&p, ' ', MAX_MINOR, &r->minor) < 0)
    goto bad;
  r->access = 0;
  for (; *p; p++) {
    int32_t bit = *p == 'r'   ? BPF_DEVCG_ACC_READ
                  : *p == 'w' ? BPF_DEVCG_ACC_WRITE
                  : *p == 'm' ? BPF_DEVCG_ACC_MKNOD
                              : 0;
    if (!bit || (r->access & bit)) goto bad;
    r->access |= bit;
  }
  if (!r->access) goto bad;
  return 0;
bad:
  return fail(EINVAL, "bad device rule '%s' (want <c|b> <major|*>:<minor|*> <access of r, w, m>; "
              "major <= %ld, minor <= %ld)", text, MAX_MAJOR, MAX_MINOR);
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  struct bpf_insn i = {.code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm};
  return i;
}

#define MAX_DEV_INSNS (6 + MAX_DEV_RULES * 8 + 2)

/*
 * The filter program; returns its length. The kernel calls it with struct bpf_cgroup_dev_ctx in R1
 * (access_type = access << 16 | type, major, minor) and allows the access iff it returns 1. Rules
 * are tried in order; a rule allows when the type matches, the requested access bits are a subset
 * of the rule's, and major and minor match (`*`: any). Nothing matching: 0, denied.
 */
static int build_dev_filter(const struct dev_rule *rules, int n, struct bpf_insn *out) {
  int k = 0;
  out[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_1, 0, 0);
  out[k++] = insn(BPF_ALU | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xffff); /* R2: device type */
  out[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_3, BPF_REG_1, 0, 0);
  out[k++] = insn(BPF_ALU | BPF_RSH | BPF_K, BPF_REG_3, 0, 0, 16); /* R3: requested access */
  out[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_4, BPF_REG_1, 4, 0); /* R4: major */
  out[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_5, BPF_REG_1, 8, 0); /* R5: minor */
  for (int i = 0; i < n; i++) {
    const struct dev_rule *r = &rules[i];
    int partial = r->access != DEV_ACC_ALL;
    int next = k + 1 + (partial ? 3 : 0) + (r->major != DEV_ANY) + (r->minor != DEV_ANY) + 2;
    /* A jump's offset counts from the instruction after it; every miss goes to the next rule. */
    out[k] = insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, (int16_t)(next - k - 1), r->type);
    k++;
    if (partial) {
      out[k++] = insn(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_3, 0, 0);
      out[k++] = insn(BPF_ALU | BPF_AND | BPF_K, BPF_REG_1, 0, 0, r->access);
      out[k] = insn(BPF_JMP | BPF_JNE | BPF_X, BPF_REG_1, BPF_REG_3, (int16_t)(next - k - 1), 0);
      k++;
    }
    if (r->major != DEV_ANY) {
      out[k] = insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, (int16_t)(next - k - 1), (int32_t)r->major);
      k++;
    }
    if (r->minor != DEV_ANY) {
      out[k] = insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_5, 0, (int16_t)(next - k - 1), (int32_t)r->minor);
      k++;
    }
    out[k++] = insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1);
    out[k++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  }
  out[k++] = insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);
  out[k++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  return k;
}

static int bpf_call(int cmd, union bpf_attr *a) { return (int)syscall(SYS_bpf, cmd, a, sizeof *a); }

/* Parse the rules, build their program and load it; returns its fd or -1 (fail() says why). */
static int load_dev_filter(char **texts, int n) {
  if (n > MAX_DEV_RULES) return fail(E2BIG, "%d device rules, at most %d", n, MAX_DEV_RULES);
  struct dev_rule rules[MAX_DEV_RULES];
  for (int i = 0; i < n; i++)
    if (parse_dev_rule(texts[i], &rules[i]) < 0) return -1;
  struct bpf_insn prog[MAX_DEV_INSNS];
  int count = build_dev_filter(rules, n, prog);
  static char log[4096];
  log[0] = 0;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
  a.insns = (uint64_t)(uintptr_t)prog;
  a.insn_cnt = (uint32_t)count;
  a.license = (uint64_t)(uintptr_t) "Apache-2.0";
  snprintf(a.prog_name, sizeof a.prog_name, "initless_dev");
  /* Kernels before 5.11 charge programs to RLIMIT_MEMLOCK: lift it for the load only, so that the
     processes the helper spawns (CRIU) inherit the usual limit. */
  struct rlimit saved, unlimited = {RLIM_INFINITY, RLIM_INFINITY};
  int lifted = getrlimit(RLIMIT_MEMLOCK, &saved) == 0 && setrlimit(RLIMIT_MEMLOCK, &unlimited) == 0;
  int fd = bpf_call(BPF_PROG_LOAD, &a);
  int e = errno;
  if (fd < 0 && e != EPERM && e != ENOSYS) {
    /* Load again with the verifier's log, to say why. */
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = sizeof log;
    a.log_level = 1;
    log[0] = 0;
    fd = bpf_call(BPF_PROG_LOAD, &a);
    e = errno;
  }
  if (lifted) setrlimit(RLIMIT_MEMLOCK, &saved);
  if (fd < 0) {
    char *last = log;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) last = line;
    return fail(e, "load the device filter (BPF_PROG_TYPE_CGROUP_DEVICE, %d instructions)%s%s", count,
                *last ? ": " : "", last);
  }
  return fd;
}

static int device_filter(char **f, int n) {
  if (n < 1) return fail(EINVAL, "device-filter takes <cgroup dir> <rule>...");
  int prog = load_dev_filter(f + 1, n - 1);
  if (prog < 0) return -1;
  int cg = open(f[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) {
    close(prog);
    return fail(errno, "open cgroup %s", f[0]);
  }
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.target_fd = (uint32_t)cg;
  a.attach_bpf_fd = (uint32_t)prog;
  a.attach_type = BPF_CGROUP_DEVICE;
  a.attach_flags = BPF_F_ALLOW_MULTI;
  int rc = bpf_call(BPF_PROG_ATTACH, &a);
  int e = errno;
  close(prog);
  close(cg);
  /* EBADF: the directory is not a cgroup of the v2 (unified) hierarchy. */
  if (rc < 0)
    return fail(e, "attach the device filter to %s%s", f[0], e == EBADF ? " (not a cgroup v2 directory)" : "");
  return 0;
}

static int device_filter_check(char **f, int n) {
  int prog = load_dev_filter(f, n);
  if (prog < 0) return -1;
  close(prog);
  return 0;
}

static int ping(char **f, int n) {
  (void)f;
  (void)n;
  return 0;
}

/* The operations answered `ok` or `err`; `args` -1: any number (spawn answers differently). */
static const struct {
  const char *name;
  int args;
  int (*fn)(char **, int);
} ops[] = {
    {"netns-create", 6, netns_create},
    {"netns-delete", 2, netns_delete},
    {"mount-overlay", 2, mount_overlay},
    {"mount-tmpfs", 2, mount_tmpfs},
    {"umount", 1, do_umount},
    {"mkdir", -1, do_mkdirs},
    {"write", -1, do_writes},
    {"device-filter", -1, device_filter},
    {"device-filter-check", -1, device_filter_check},
    {"ping", 0, ping},
};

static void answer(const char *tag, int rc) {
  if (rc == 0) {
    printf("%s\tok\n", tag);
  } else {
    for (char *p = err_msg; *p; p++)
      if (*p == '\t' || *p == '\n') *p = ' ';
    printf("%s\terr\t%d\t%s\n", tag, err_no, err_msg);
  }
  fflush(stdout);
}

/* One request line; returns 1 when the helper must stop (namespace trouble). */
static int serve(char *line) {
  char *f[MAX_FIELDS + 1];
  int n = 0;
  for (char *p = line, *tok; n < MAX_FIELDS && (tok = strsep(&p, "\t"));) f[n++] = tok;
  err_no = 0;
  err_msg[0] = 0;
  if (n < 2) {
    fail(EINVAL, "expected <tag> <op> [args]");
    answer(n ? f[0] : "-", -1);
    return 0;
  }
  if (!strcmp(f[1], "spawn")) {
    pid_t pid;
    if (do_spawn(f[0], f + 2, n - 2, &pid) < 0) {
      answer(f[0], -1);
    } else {
      printf("%s\tpid\t%d\n", f[0], (int)pid);
      fflush(stdout);
    }
    return 0;
  }
  int rc = -1, known = 0;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
    if (strcmp(f[1], ops[i].name)) continue;
    known = 1;
    if (ops[i].args >= 0 && n - 2 != ops[i].args)
      fail(EINVAL, "%s takes %d arguments, got %d", ops[i].name, ops[i].args, n - 2);
    else
      rc = ops[i].fn(f + 2, n - 2);
    break;
  }
  if (!known) fail(EINVAL, "unknown operation %s", f[1]);
  answer(f[0], rc);
  return rc == -2;
}

int main(void) {
  /* See the top of this file. Not fatal: only lazy restores on hosts with THP `always` need it. */
  if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0) perror("sandbox-helper: PR_SET_THP_DISABLE");
  host_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  host_nl = nl_open();
  host_sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (host_ns < 0 || host_nl < 0 || host_sock < 0 || sfd < 0) {
    perror("sandbox-helper: start");
    return 1;
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  if (!buf) return 1;
  struct pollfd *pfd = NULL;
  size_t pfd_cap = 0;
  for (;;) {
    /* stdin, the signalfd, then every status pipe not yet reported on. */
    if (pfd_cap < nchildren + 2) {
      pfd_cap = nchildren + 2 + 64;
      if (!(pfd = realloc(pfd, pfd_cap * sizeof *pfd))) return 1;
    }
    size_t npfd = 2;
    pfd[0] = (struct pollfd){.fd = 0, .events = POLLIN};
    pfd[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (size_t i = 0; i < nchildren; i++)
      if (children[i].status_fd >= 0) pfd[npfd++] = (struct pollfd){.fd = children[i].status_fd, .events = POLLIN};
    if (poll(pfd, npfd, -1) < 0) {
      if (errno == EINTR) continue;
      perror("sandbox-helper: poll");
      return 1;
    }
    /* Status before exits: a process that reported and then exited is reported in that order. */
    for (size_t j = 2; j < npfd; j++) {
      if (!pfd[j].revents) continue;
      for (size_t i = 0; i < nchildren; i++)
        if (children[i].status_fd == pfd[j].fd) report_status(&children[i]);
    }
    if (npfd > 2) fflush(stdout);
    if (pfd[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {
      }
      reap();
    }
    if (!pfd[0].revents) continue;
    if (len == cap) {
      cap *= 2;
      if (!(buf = realloc(buf, cap))) return 1;
    }
    ssize_t got = read(0, buf + len, cap - len);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return 0; /* the executor is gone */
    len += (size_t)got;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', len - (size_t)(start - buf)))) {
      *nl = 0;
      if (nl > start && serve(start)) return 3; /* stuck in a namespace that is not the executor's */
      start = nl + 1;
    }
    len -= (size_t)(start - buf);
    memmove(buf, start, len);
  }
}
