// A by-hand check of the CUDA IPC backend on a GPU host (vitest cannot reach it: no GPU in CI).
// Two processes, as CUDA IPC requires: the parent ("prefill") registers a cudaMalloc'd region
// and passes its metadata down a pipe; the child ("decode") READs blocks of it into its own
// device memory and into host memory, compares every byte, times one large read, and sends
// the read's notification back. Exit status 0 when everything matched.
//
// Odd blocks take the gather kernel's byte path and its 16-byte head/tail split; block lists
// take the block-list kernel where they can, and the queued pairs where they cannot.
//
//   nvcc -std=c++17 -O2 -arch=sm_90 -DSWITCHYARD_TRANSFER_CUDA_IPC=1 -DSWITCHYARD_TRANSFER_CUDA_KERNELS=1 \
//     -Inative/src test/transfer/cuda_ipc_check.cpp native/src/transfer/cuda_copy_kernels.cu \
//     native/src/transfer/{transfer_error,memory_region,agent_metadata,tcp_socket,tcp_backend,transfer_agent,cuda_ipc_backend}.cpp \
//     -o cuda_ipc_check -lpthread
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "transfer/transfer_agent.h"

using namespace sy::transfer;

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kRegionBytes = 256 * kMiB;

uint8_t pattern(uint64_t i) { return static_cast<uint8_t>((i * 2654435761u) >> 13); }

void write_all(int fd, const void* p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) throw std::runtime_error("pipe write failed");
    p = static_cast<const char*>(p) + w;
    n -= w;
  }
}
void read_all(int fd, void* p, size_t n) {
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) throw std::runtime_error("pipe read failed");
    p = static_cast<char*>(p) + r;
    n -= r;
  }
}

TransferStatus wait_done(TransferAgent& agent, uint64_t id) {
  for (;;) {
    TransferStatus s = agent.status(id);
    if (s.state != TransferState::Pending) return s;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

int decode(int metadata_fd) {
  uint32_t size;
  read_all(metadata_fd, &size, sizeof size);
  std::string blob(size, '\0');
  read_all(metadata_fd, blob.data(), size);
  TransferAgent agent(AgentOptions{"decode"});
  std::printf("decode: backends:");
  for (auto& b : agent.backends()) std::printf(" %s", b.c_str());
  std::printf("\n");
  void* device = nullptr;
  if (cudaMalloc(&device, kRegionBytes) != cudaSuccess) return 2;
  cudaMemset(device, 0, kRegionBytes);
  std::vector<uint8_t> host(kRegionBytes, 0);
  auto dev_region = agent.register_memory(MemoryKind::Cuda, 0, reinterpret_cast<uint64_t>(device), kRegionBytes);
  auto host_region = agent.register_memory(MemoryKind::Host, 0, reinterpret_cast<uint64_t>(host.data()), kRegionBytes);
  std::string peer = agent.load_remote_metadata(blob);
  uint64_t remote_id = decode_metadata(blob).regions.at(0)->id;

  // Odd blocks: 1 byte, 4097 bytes, 7 blocks of 1 MiB + 3, landing at other offsets.
  std::vector<BlockDescriptor> remote, local_dev, local_host;
  auto add = [&](uint64_t from, uint64_t to, uint64_t length) {
    remote.push_back({false, remote_id, from, 0, length, 0});
    local_dev.push_back({false, dev_region->id, to, 0, length, 0});
    local_host.push_back({false, host_region->id, to, 0, length, 0});
  };
  add(5, 3, 1);
  add(10'000, 20'000, 4097);
  for (int i = 0; i < 7; ++i) add(kMiB * (10 + 2 * i) + i, kMiB * (100 - 3 * i), kMiB + 3);

  int failures = 0;
  for (bool to_device : {true, false}) {
    auto& local = to_device ? local_dev : local_host;
    TransferStatus s = wait_done(agent, agent.post_read(peer, remote, local, nullptr, 10'000));
    if (s.state != TransferState::Done) {
      std::printf("decode: read into %s failed: %s\n", to_device ? "device" : "host", s.message.c_str());
      return 1;
    }
    if (to_device) cudaMemcpy(host.data(), device, kRegionBytes, cudaMemcpyDeviceToHost);
    for (size_t b = 0; b < remote.size(); ++b) {
      for (uint64_t k = 0; k < remote[b].length; ++k) {
        if (host[local[b].offset + k] != pattern(remote[b].offset + k)) {
          failures++;
          break;
        }
      }
    }
    std::printf("decode: read of %zu blocks into %s memory: %s\n", remote.size(), to_device ? "device" : "host",
                failures ? "MISMATCH" : "byte-exact");
  }

  // Block lists (a KV read's form). Into device memory, 16-byte aligned, they are issued at
  // posting (offsets uploaded, the kernel computes each piece); odd lengths or host memory go
  // to the worker as pairs. Blocks of 48 KiB + 16 B end in a partial piece.
  struct ListCase {
    const char* what;
    uint64_t length;
    bool to_device;
  };
  for (const ListCase& c : {ListCase{"300 blocks of 48 KiB + 16 B into device memory", 48 * 1024 + 16, true},
                            ListCase{"300 blocks of 4097 B into device memory", 4097, true},
                            ListCase{"300 blocks of 48 KiB + 16 B into host memory", 48 * 1024 + 16, false}}) {
    cudaMemset(device, 0, kRegionBytes);
    std::fill(host.begin(), host.end(), 0);
    constexpr uint64_t kStride = 100 * 1024;
    BlockList from{remote_id, c.length, {}};
    BlockList to{c.to_device ? dev_region->id : host_region->id, c.length, {}};
    for (uint64_t i = 0; i < 300; ++i) {
      from.offsets.push_back((i * 37 % 300) * kStride);
      to.offsets.push_back((299 - i) * kStride + kStride / 2);
    }
    std::vector<uint64_t> expect_from = from.offsets, expect_to = to.offsets;
    TransferStatus s = wait_done(agent, agent.post_read(peer, std::move(from), std::move(to), nullptr, 10'000));
    if (s.state != TransferState::Done) {
      std::printf("decode: block-list read, %s, failed: %s\n", c.what, s.message.c_str());
      return 1;
    }
    if (c.to_device) cudaMemcpy(host.data(), device, kRegionBytes, cudaMemcpyDeviceToHost);
    bool exact = true;
    for (size_t b = 0; exact && b < expect_from.size(); ++b) {
      for (uint64_t k = 0; k < c.length; ++k) {
        if (host[expect_to[b] + k] != pattern(expect_from[b] + k)) {
          exact = false;
          break;
        }
      }
    }
    if (!exact) failures++;
    std::printf("decode: block-list read, %s: %s\n", c.what, exact ? "byte-exact" : "MISMATCH");
  }

  // Bandwidth: 256 blocks of 1 MiB, device to device, with the notification.
  std::vector<BlockDescriptor> big_remote, big_local;
  for (uint64_t i = 0; i < 256; ++i) {
    big_remote.push_back({false, remote_id, i * kMiB, 0, kMiB, 0});
    big_local.push_back({false, dev_region->id, (255 - i) * kMiB, 0, kMiB, 0});
  }
  wait_done(agent, agent.post_read(peer, big_remote, big_local, nullptr, 10'000));  // warm-up
  auto t0 = std::chrono::steady_clock::now();
  std::string note = "blocks read";
  TransferStatus s = wait_done(agent, agent.post_read(peer, big_remote, big_local, &note, 10'000));
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("decode: 256 x 1 MiB device->device READ: %s, %.3f ms, %.1f GB/s\n",
              s.state == TransferState::Done ? "done" : s.message.c_str(), ms, 256.0 * kMiB / ms / 1e6);
  auto lists = [&] {
    BlockList from{remote_id, kMiB, {}}, to{dev_region->id, kMiB, {}};
    for (uint64_t i = 0; i < 256; ++i) {
      from.offsets.push_back(i * kMiB);
      to.offsets.push_back((255 - i) * kMiB);
    }
    return std::make_pair(std::move(from), std::move(to));
  };
  auto [warm_from, warm_to] = lists();
  wait_done(agent, agent.post_read(peer, std::move(warm_from), std::move(warm_to), nullptr, 10'000));
  auto [list_from, list_to] = lists();
  t0 = std::chrono::steady_clock::now();
  TransferStatus listed = wait_done(agent, agent.post_read(peer, std::move(list_from), std::move(list_to), nullptr, 10'000));
  ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("decode: the same as block lists: %s, %.3f ms, %.1f GB/s\n",
              listed.state == TransferState::Done ? "done" : listed.message.c_str(), ms, 256.0 * kMiB / ms / 1e6);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the notification leave
  agent.close();
  cudaFree(device);
  return failures || s.state != TransferState::Done || listed.state != TransferState::Done ? 1 : 0;
}

int prefill(int metadata_fd, pid_t child) {
  TransferAgent agent(AgentOptions{"prefill"});
  void* device = nullptr;
  if (cudaMalloc(&device, kRegionBytes) != cudaSuccess) return 2;
  std::vector<uint8_t> host(kRegionBytes);
  for (uint64_t i = 0; i < kRegionBytes; ++i) host[i] = pattern(i);
  cudaMemcpy(device, host.data(), kRegionBytes, cudaMemcpyHostToDevice);
  agent.register_memory(MemoryKind::Cuda, 0, reinterpret_cast<uint64_t>(device), kRegionBytes);
  std::string blob = agent.metadata();
  uint32_t size = static_cast<uint32_t>(blob.size());
  write_all(metadata_fd, &size, sizeof size);
  write_all(metadata_fd, blob.data(), size);
  int status = 0;
  waitpid(child, &status, 0);
  auto notes = agent.take_notifications();
  for (auto& n : notes) std::printf("prefill: notification from %s: %s\n", n.from.c_str(), n.bytes.c_str());
  agent.close();
  cudaFree(device);
  bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && notes.size() == 1;
  std::printf("%s\n", ok ? "CUDA IPC CHECK PASSED" : "CUDA IPC CHECK FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main() {
  int fds[2];
  if (pipe(fds) != 0) return 2;
  pid_t pid = fork();  // before any CUDA call: a CUDA context does not survive fork
  try {
    if (pid == 0) {
      close(fds[1]);
      return decode(fds[0]);
    }
    close(fds[0]);
    return prefill(fds[1], pid);
  } catch (const std::exception& e) {
    std::printf("%s: %s\n", pid == 0 ? "decode" : "prefill", e.what());
    return 1;
  }
}
