// What running validation in worker processes costs, against the same work
// in-process: the bare round trip (a ping frame), a whole validation of a
// small checkpoint both ways (back to back, where forking the next request's
// child is on the critical path, and spaced out, where it is not), a
// worker's start-up (exec + libtorch), and the time to serve again after a
// worker is SIGKILLed. Prints medians (and p99
// for the ping).
//
// usage: worker_roundtrip WORKER_BINARY REFERENCE CHECKPOINT [RUNS]
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/spec.h"
#include "server/worker/validation_pool.h"

namespace {

namespace v1 = weightgate::v1;
using weightgate::worker::ValidationPool;
using weightgate::worker::WorkRequest;
using weightgate::worker::WorkResponse;
using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

bool Check(const absl::StatusOr<WorkResponse>& r, const char* what) {
  if (r.ok() && r->code() == 0) return true;
  std::fprintf(stderr, "worker_roundtrip: %s failed: %s\n", what,
               r.ok() ? r->message().c_str() : r.status().ToString().c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: worker_roundtrip WORKER_BINARY REFERENCE CHECKPOINT [RUNS]\n");
    return 2;
  }
  int runs = 30;
  if (argc > 4 && !absl::SimpleAtoi(argv[4], &runs)) return 2;
  absl::StatusOr<v1::ModelSpec> spec = weightgate::statedict::SpecFromFile(argv[2]);
  if (!spec.ok()) {
    std::fprintf(stderr, "worker_roundtrip: %s\n", spec.status().ToString().c_str());
    return 2;
  }
  v1::NormalizationPolicy policy;
  weightgate::statedict::NormalizeOptions options;
  options.device = "cpu";

  ValidationPool::Options po;
  po.argv = {argv[1], "--validation_worker"};
  po.workers = 1;
  po.prestart = false;
  auto start = Clock::now();
  absl::StatusOr<std::unique_ptr<ValidationPool>> created = ValidationPool::Create(po);
  if (!created.ok()) return 2;
  ValidationPool& pool = **created;
  WorkRequest ping;
  ping.set_ping(true);
  if (!Check(pool.Run(ping, {}), "first ping")) return 1;
  double cold_ms = Ms(start);

  std::vector<double> pings;
  for (int i = 0; i < runs * 10; ++i) {
    start = Clock::now();
    if (!Check(pool.Run(ping, {}), "ping")) return 1;
    pings.push_back(Ms(start));
  }

  WorkRequest validate;
  validate.mutable_normalize()->set_checkpoint_path(argv[3]);
  *validate.mutable_normalize()->mutable_spec() = *spec;
  validate.mutable_normalize()->set_device("cpu");
  std::vector<double> in_process, isolated;
  // Warm both paths (libtorch's first use, page cache) before measuring.
  absl::StatusOr<v1::ValidationReport> warm =
      weightgate::statedict::Normalize(argv[3], *spec, policy, options);
  absl::StatusOr<WorkResponse> warm_worker = pool.Run(validate, {});
  if (!warm.ok() || !Check(warm_worker, "validation")) return 1;
  if (warm->verdict() != warm_worker->report().verdict() || warm->verdict() == v1::INVALID) {
    std::fprintf(stderr, "worker_roundtrip: expected the same VALID/NORMALIZED verdict\n");
    return 1;
  }
  for (int i = 0; i < runs; ++i) {
    start = Clock::now();
    absl::StatusOr<v1::ValidationReport> r =
        weightgate::statedict::Normalize(argv[3], *spec, policy, options);
    in_process.push_back(Ms(start));
    if (!r.ok()) return 1;
    start = Clock::now();
    if (!Check(pool.Run(validate, {}), "validation")) return 1;
    isolated.push_back(Ms(start));
  }

  // With idle time between requests (as between uploads) the next child is
  // already forked when a request arrives.
  std::vector<double> spaced;
  for (int i = 0; i < runs; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    start = Clock::now();
    if (!Check(pool.Run(validate, {}), "validation")) return 1;
    spaced.push_back(Ms(start));
  }

  // A request that touches no tensor code: what forking a child costs.
  WorkRequest derive;
  derive.mutable_spec()->set_reference_path(argv[2]);
  std::vector<double> spec_in_process, spec_isolated;
  for (int i = 0; i < runs; ++i) {
    start = Clock::now();
    if (!weightgate::statedict::SpecFromFile(argv[2]).ok()) return 1;
    spec_in_process.push_back(Ms(start));
    start = Clock::now();
    if (!Check(pool.Run(derive, {}), "spec")) return 1;
    spec_isolated.push_back(Ms(start));
  }

  std::vector<double> recover;
  for (int i = 0; i < std::max(3, runs / 10); ++i) {
    ::kill(pool.WorkerPids().at(0), SIGKILL);
    (void)pool.Run(ping, {});  // notices the death, respawns
    start = Clock::now();
    if (!Check(pool.Run(validate, {}), "validation after a kill")) return 1;
    recover.push_back(Ms(start));
  }

  double a = Quantile(in_process, 0.5), b = Quantile(isolated, 0.5);
  std::fflush(stderr);
  std::printf("worker start-up (exec + libtorch, first ping): %.0f ms\n", cold_ms);
  std::printf("ping round trip: median %.3f ms, p99 %.3f ms (%zu runs)\n", Quantile(pings, 0.5),
              Quantile(pings, 0.99), pings.size());
  std::printf(
      "validation of %s: in-process median %.2f ms, in a worker %.2f ms, "
      "overhead %.2f ms (%d runs, %s, %d tensors)\n",
      argv[3], a, b, b - a, runs, v1::Verdict_Name(warm->verdict()).c_str(),
      static_cast<int>(warm->tensor_count()));
  std::printf(
      "the same in a worker, 100 ms apart (child forked ahead): median %.2f ms, "
      "overhead %.2f ms\n",
      Quantile(spaced, 0.5), Quantile(spaced, 0.5) - a);
  std::printf("spec of %s (no tensor code): in-process median %.2f ms, in a worker %.2f ms\n",
              argv[2], Quantile(spec_in_process, 0.5), Quantile(spec_isolated, 0.5));
  std::printf("first validation after a worker is SIGKILLed: median %.0f ms\n",
              Quantile(recover, 0.5));
  return 0;
}
