#pragma once

// A TCP port on 127.0.0.1 that nothing listens on: the kernel's pick, released again (for the
// rendezvous of the single-process group tests and of ep_worker's extra groups).
#include <c10/util/Exception.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

namespace test {

inline int64_t free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  TORCH_CHECK(fd >= 0, "free_port: no socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  TORCH_CHECK(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
              "free_port: bind failed");
  socklen_t len = sizeof(addr);
  TORCH_CHECK(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0,
              "free_port: getsockname failed");
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace test
