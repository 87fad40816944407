#include "CEchoPeer.h"

#include <errno.h>
#include <unistd.h>

static int transfer_fully(int fd, unsigned char *buffer, size_t size, int writing) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = writing ? write(fd, buffer + done, size - done) : read(fd, buffer + done, size - done);
    if (n > 0) {
      done += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return 0;
    }
  }
  return 1;
}

pid_t CEchoPeer_fork(int fd, int close_in_child, unsigned char *buffer, size_t size) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  if (close_in_child >= 0) close(close_in_child);
  while (transfer_fully(fd, buffer, size, 0) && transfer_fully(fd, buffer, size, 1)) {
  }
  _exit(0);
}
