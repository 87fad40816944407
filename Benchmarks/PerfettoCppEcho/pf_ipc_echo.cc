// Perfetto's own C++ IPC (ipc::Host / ipc::Client on base::UnixTaskRunner) serving and calling
// pfpeers.EchoService, so `ipc-echo` can be measured side by side with it, in every pairing.
// Built inside a Perfetto source tree by scripts/perfetto-cpp-echo.sh; never part of our build.
//
//   pf_ipc_echo serve --socket PATH
//   pf_ipc_echo bench --socket PATH [--payload 16] [--iterations 10000]
//
// `bench` mirrors `ipc-echo bench`: 200 warm-up calls, then sequential Echo calls, each issued
// from the previous reply's callback; it prints the same summary line.
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "perfetto/ext/base/unix_task_runner.h"
#include "perfetto/ext/ipc/client.h"
#include "perfetto/ext/ipc/host.h"
#include "src/swift_pfecho/echo.gen.h"
#include "src/swift_pfecho/echo.ipc.h"

namespace {

using perfetto::ipc::AsyncResult;
using perfetto::ipc::Deferred;
using pfpeers::gen::EchoReply;
using pfpeers::gen::EchoRequest;

double NowMicros() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

double CpuMicros() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec * 1e6 + usage.ru_utime.tv_usec + usage.ru_stime.tv_sec * 1e6 +
         usage.ru_stime.tv_usec;
}

// The service: the same answers as ipc-echo's EchoServiceImplementation.
class EchoServiceImpl : public pfpeers::gen::EchoService {
 public:
  void Echo(const EchoRequest& request, DeferredEchoReply reply) override {
    auto result = AsyncResult<EchoReply>::Create();
    Fill(request, &*result);
    perfetto::base::ScopedFile received = TakeReceivedFD();
    result->set_received_fd_size(received ? static_cast<int64_t>(lseek(*received, 0, SEEK_END))
                                          : -1);
    perfetto::base::ScopedFile attached;
    if (request.want_fd()) {
      attached.reset(memfd_create("fd-payload", MFD_CLOEXEC));
      std::string text = "fd-payload:" + request.data();
      if (write(*attached, text.data(), text.size()) < 0) attached.reset();
      if (attached) result.set_fd(*attached);
    }
    reply.Resolve(std::move(result));
  }

  void StreamEcho(const EchoRequest& request, DeferredEchoReply reply) override {
    uint32_t count = request.has_count() ? request.count() : 1;
    for (uint32_t index = 0; index < count; index++) {
      auto result = AsyncResult<EchoReply>::Create();
      Fill(request, &*result);
      result->set_index(index);
      result.set_has_more(index + 1 < count);
      reply.Resolve(std::move(result));
    }
  }

 private:
  void Fill(const EchoRequest& request, EchoReply* out) {
    out->set_data(request.data());
    out->set_seq(request.seq());
    out->set_peer_pid(client_info().pid());
    out->set_peer_uid(static_cast<int32_t>(client_info().uid()));
  }
};

class Listener : public perfetto::ipc::ServiceProxy::EventListener {
 public:
  explicit Listener(perfetto::base::UnixTaskRunner* runner) : runner_(runner) {}
  void OnConnect() override {
    connected = true;
    runner_->Quit();
  }
  void OnDisconnect() override {
    fprintf(stderr, "disconnected\n");
    exit(1);
  }
  bool connected = false;

 private:
  perfetto::base::UnixTaskRunner* runner_;
};

struct Bench {
  pfpeers::gen::EchoServiceProxy* proxy;
  perfetto::base::UnixTaskRunner* runner;
  EchoRequest request;
  int warmup = 200;
  int iterations = 0;
  int issued = 0;
  double started = 0;
  std::vector<double> samples;

  void Next() {
    started = NowMicros();
    Deferred<EchoReply> on_reply([this](AsyncResult<EchoReply> reply) {
      double elapsed = NowMicros() - started;
      if (!reply.success() || reply->data().size() != request.data().size()) {
        fprintf(stderr, "bad reply\n");
        exit(1);
      }
      if (issued++ >= warmup) samples.push_back(elapsed);
      if (issued < warmup + iterations) {
        Next();
      } else {
        runner->Quit();
      }
    });
    request.set_seq(static_cast<uint32_t>(issued));
    proxy->Echo(request, std::move(on_reply));
  }
};

const char* Flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 2; i + 1 < argc; i++)
    if (strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

int Serve(const char* socket) {
  perfetto::base::UnixTaskRunner runner;
  unlink(socket);
  std::unique_ptr<perfetto::ipc::Host> host = perfetto::ipc::Host::CreateInstance(socket, &runner);
  if (!host || !host->ExposeService(std::unique_ptr<perfetto::ipc::Service>(new EchoServiceImpl))) {
    fprintf(stderr, "cannot listen on %s\n", socket);
    return 1;
  }
  printf("serving EchoService on %s\n", socket);
  fflush(stdout);
  runner.Run();
  return 0;
}

int RunBench(const char* socket, int payload, int iterations) {
  perfetto::base::UnixTaskRunner runner;
  auto client = perfetto::ipc::Client::CreateInstance({socket, /*retry=*/false}, &runner);
  Listener listener(&runner);
  pfpeers::gen::EchoServiceProxy proxy(&listener);
  client->BindService(proxy.GetWeakPtr());
  runner.Run();  // until OnConnect
  Bench bench{&proxy, &runner, {}, 200, iterations, 0, 0, {}};
  bench.request.set_data(std::string(static_cast<size_t>(payload), 'a'));
  bench.samples.reserve(static_cast<size_t>(iterations));
  double cpu_before = CpuMicros();
  runner.PostTask([&bench] { bench.Next(); });
  runner.Run();
  double cpu_per_call = (CpuMicros() - cpu_before) / (bench.warmup + iterations);
  std::vector<double>& s = bench.samples;
  double sum = 0;
  for (double v : s) sum += v;
  std::sort(s.begin(), s.end());
  double mean = sum / s.size();
  printf("echo  %dB [perfetto c++]: mean=%.2fus p50=%.2fus p99=%.2fus calls/s=%.0f cpu=%.2fus/call "
         "(this process)\n",
         payload, mean, s[s.size() / 2], s[std::min(s.size() - 1, s.size() * 99 / 100)],
         1e6 / mean, cpu_per_call);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: pf_ipc_echo serve|bench --socket PATH [--payload N] [--iterations N]\n");
    return 2;
  }
  const char* socket = Flag(argc, argv, "--socket", "/tmp/pf_ipc_echo.sock");
  if (strcmp(argv[1], "serve") == 0) return Serve(socket);
  if (strcmp(argv[1], "bench") == 0)
    return RunBench(socket, atoi(Flag(argc, argv, "--payload", "16")),
                    atoi(Flag(argc, argv, "--iterations", "10000")));
  fprintf(stderr, "unknown command %s\n", argv[1]);
  return 2;
}
