// weightgate-cpp-example: fetches a model with the C++ client library and
// prints "N tensors, B bytes, sha256 S".
//
//   weightgate-cpp-example [--server ADDR] [--token T] [--tls_ca PEM]
//       [--tls_cert PEM --tls_key PEM] [--streams N] [--out FILE [--sync]] REF
//
// Without --out the model is fetched as at::Tensor views of one buffer; with
// --out it is written to FILE (the safetensors blob). Exit 0 on success, 1 on
// a failed fetch, 2 on bad arguments.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "weightgate/client.h"
#include "weightgate/tensors.h"

int main(int argc, char** argv) {
  weightgate::ClientOptions options;
  std::string out;
  std::string ref;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* field) {
      if (i + 1 >= args.size()) {
        std::cerr << "weightgate-cpp-example: " << a << " needs a value\n";
        std::exit(2);
      }
      *field = args[++i];
    };
    std::string streams;
    if (a == "--server") {
      value(&options.server);
    } else if (a == "--token") {
      value(&options.token);
    } else if (a == "--tls_ca") {
      value(&options.tls_ca);
    } else if (a == "--tls_cert") {
      value(&options.tls_cert);
    } else if (a == "--tls_key") {
      value(&options.tls_key);
    } else if (a == "--out") {
      value(&out);
    } else if (a == "--streams") {
      value(&streams);
      options.streams = std::atoi(streams.c_str());
    } else if (a == "--sync") {
      options.sync_files = true;
    } else if (a == "--help" || a == "-h") {
      std::cout
          << "usage: weightgate-cpp-example [--server ADDR] [--token T] [--tls_ca PEM]\n"
             "         [--tls_cert PEM --tls_key PEM] [--streams N] [--out FILE [--sync]] REF\n";
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      std::cerr << "weightgate-cpp-example: unknown flag " << a << "\n";
      return 2;
    } else if (ref.empty()) {
      ref = a;
    } else {
      std::cerr << "weightgate-cpp-example: one REF only\n";
      return 2;
    }
  }
  if (ref.empty()) {
    std::cerr << "usage: weightgate-cpp-example [--server ADDR] REF\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<weightgate::Client>> client = weightgate::Client::Create(options);
  if (!client.ok()) {
    std::cerr << "weightgate-cpp-example: " << client.status() << "\n";
    return 2;
  }
  weightgate::FetchInfo info;
  size_t count = 0;
  if (out.empty()) {
    absl::StatusOr<weightgate::TensorMap> tensors = (*client)->FetchTensors(ref, &info);
    if (!tensors.ok()) {
      std::cerr << "weightgate-cpp-example: " << tensors.status() << "\n";
      return 1;
    }
    count = tensors->size();
  } else {
    absl::StatusOr<weightgate::FetchInfo> fetched = (*client)->FetchToFile(ref, out);
    if (!fetched.ok()) {
      std::cerr << "weightgate-cpp-example: " << fetched.status() << "\n";
      return 1;
    }
    info = *std::move(fetched);
    count = info.tensors.size();
  }
  std::cout << count << " tensors, " << info.total_bytes << " bytes, sha256 " << info.sha256
            << "\n";
  std::cerr << "streams " << info.streams << ", resumes " << info.resumes << "\n";
  return 0;
}
