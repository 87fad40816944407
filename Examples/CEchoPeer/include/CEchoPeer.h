// The benchmarks' floor: an echo peer in a separate process, as a real peer is. Forked, then
// nothing but read and write on one socket (async-signal-safe, so it is sound to fork from a
// multi-threaded Swift process), until end of stream.
#pragma once
#include <stddef.h>
#include <sys/types.h>

// Forks a child that echoes `size`-byte messages on `fd` using `buffer` (at least `size`
// bytes, allocated before the fork) and closes `close_in_child` first. Returns the child's
// pid, or -1 with errno set.
pid_t CEchoPeer_fork(int fd, int close_in_child, unsigned char *buffer, size_t size);
