#ifdef __linux__
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include "CPerfettoIPCLinux.h"

// initial-exec: a plain %fs-relative load instead of a __tls_get_addr call on every check.
static __thread pid_t cached_tid __attribute__((tls_model("initial-exec")));
pid_t CPerfettoIPC_gettid(void) { return cached_tid ? cached_tid : (cached_tid = gettid()); }

void CPerfettoIPC_setThreadName(const char *name) { pthread_setname_np(pthread_self(), name); }
int CPerfettoIPC_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int CPerfettoIPC_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  return accept4(fd, addr, len, flags);
}

int CPerfettoIPC_peerCredentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
  *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
  return 0;
}

struct cmsghdr *CPerfettoIPC_CMSG_FIRSTHDR(const struct msghdr *msg) { return CMSG_FIRSTHDR(msg); }
struct cmsghdr *CPerfettoIPC_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg) { return CMSG_NXTHDR(msg, cmsg); }
unsigned char *CPerfettoIPC_CMSG_DATA(struct cmsghdr *cmsg) { return CMSG_DATA(cmsg); }
size_t CPerfettoIPC_CMSG_SPACE(size_t payload) { return CMSG_SPACE(payload); }
size_t CPerfettoIPC_CMSG_LEN(size_t payload) { return CMSG_LEN(payload); }

const int CPerfettoIPC_MSG_CMSG_CLOEXEC = MSG_CMSG_CLOEXEC;
const int CPerfettoIPC_SCM_RIGHTS = SCM_RIGHTS;
const int CPerfettoIPC_MFD_CLOEXEC = MFD_CLOEXEC;
const int CPerfettoIPC_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const int CPerfettoIPC_F_ADD_SEALS = F_ADD_SEALS;
const int CPerfettoIPC_F_SEAL_SHRINK = F_SEAL_SHRINK;
const int CPerfettoIPC_F_SEAL_GROW = F_SEAL_GROW;
const int CPerfettoIPC_F_SEAL_SEAL = F_SEAL_SEAL;
const int CPerfettoIPC_F_GET_SEALS = F_GET_SEALS;
#endif
