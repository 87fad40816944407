// Linux calls and macros that Swift's Glibc module does not import. One-line wrappers only;
// every decision is made in Swift.
#pragma once

#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>

// Thread id of the caller (cached per thread: gettid() is a syscall).
pid_t CPerfettoIPC_gettid(void);
void CPerfettoIPC_setThreadName(const char *name);

int CPerfettoIPC_memfd_create(const char *name, unsigned int flags);
int CPerfettoIPC_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

// SO_PEERCRED: pid, uid and gid of the peer of a connected unix socket. Returns 0 or -1/errno.
int CPerfettoIPC_peerCredentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

// CMSG helpers.
struct cmsghdr *CPerfettoIPC_CMSG_FIRSTHDR(const struct msghdr *msg);
struct cmsghdr *CPerfettoIPC_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg);
unsigned char *CPerfettoIPC_CMSG_DATA(struct cmsghdr *cmsg);
size_t CPerfettoIPC_CMSG_SPACE(size_t payload);
size_t CPerfettoIPC_CMSG_LEN(size_t payload);

// Constants that come from macros Swift cannot see.
extern const int CPerfettoIPC_MSG_CMSG_CLOEXEC;
extern const int CPerfettoIPC_SCM_RIGHTS;
extern const int CPerfettoIPC_MFD_CLOEXEC;
extern const int CPerfettoIPC_MFD_ALLOW_SEALING;
extern const int CPerfettoIPC_F_ADD_SEALS;
extern const int CPerfettoIPC_F_SEAL_SHRINK;
extern const int CPerfettoIPC_F_SEAL_GROW;
extern const int CPerfettoIPC_F_SEAL_SEAL;
extern const int CPerfettoIPC_F_GET_SEALS;
// 32-bit atomics on memory Swift does not own (a shared-memory page header written by another
// process). Sequentially consistent, as Perfetto's SharedMemoryABI uses them.
static inline uint32_t CPerfettoIPC_atomicLoad32(const uint32_t *address) {
    return __atomic_load_n(address, __ATOMIC_SEQ_CST);
}
static inline void CPerfettoIPC_atomicStore32(uint32_t *address, uint32_t value) {
    __atomic_store_n(address, value, __ATOMIC_SEQ_CST);
}
// Returns 1 and stores `desired` if `*address == *expected`; else returns 0 and updates `*expected`.
static inline int CPerfettoIPC_atomicCompareExchange32(uint32_t *address, uint32_t *expected, uint32_t desired) {
    return __atomic_compare_exchange_n(address, expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline void CPerfettoIPC_atomicStore16(uint16_t *address, uint16_t value) {
    __atomic_store_n(address, value, __ATOMIC_RELEASE);
}
static inline uint16_t CPerfettoIPC_atomicLoad16(const uint16_t *address) {
    return __atomic_load_n(address, __ATOMIC_ACQUIRE);
}
// Asks the CPU to start loading `count` bytes at `address` into its caches, one request per
// cache line, so that a walk through memory not touched lately waits for one miss, not one per
// line in turn. A hint: it never faults, whatever the address.
static inline void CPerfettoIPC_prefetch(const void *address, size_t count) {
    const char *bytes = (const char *)address;
    for (size_t offset = 0; offset < count; offset += 64) __builtin_prefetch(bytes + offset, 0, 3);
}
// Gives memory malloc holds free back to the system (glibc's malloc_trim, which Glibc's Swift
// module does not import).
static inline void CPerfettoIPC_releaseFreeMemory(void) { malloc_trim(0); }
#endif
