// cpp_client_check [--server ADDR] [--tls_ca PEM] [--tls_cert PEM --tls_key PEM] REF OUT
//
// Fetches REF with Client::FetchTensors, checks that every tensor is a view of
// one storage, and writes the tensors with torch::pickle_save to OUT so the
// test can load them into the real model in Python (torch.load) and compare
// outputs. Prints "N tensors, one storage" and exits 0, or prints why not
// and exits 1.
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "weightgate/client.h"
#include "weightgate/tensors.h"

int main(int argc, char** argv) {
  weightgate::ClientOptions options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 < argc && a == "--server") {
      options.server = argv[++i];
    } else if (i + 1 < argc && a == "--tls_ca") {
      options.tls_ca = argv[++i];
    } else if (i + 1 < argc && a == "--tls_cert") {
      options.tls_cert = argv[++i];
    } else if (i + 1 < argc && a == "--tls_key") {
      options.tls_key = argv[++i];
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    std::cerr << "usage: cpp_client_check [--server ADDR] REF OUT\n";
    return 2;
  }
  auto client = weightgate::Client::Create(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  auto tensors = (*client)->FetchTensors(positional[0]);
  if (!tensors.ok()) {
    std::cerr << tensors.status() << "\n";
    return 1;
  }
  std::set<const void*> storages;
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : *tensors) {
    if (tensor.numel() > 0) storages.insert(tensor.storage().unsafeGetStorageImpl());
    dict.insert(name, tensor);
  }
  if (storages.size() != 1) {
    std::cerr << "tensors span " << storages.size() << " storages\n";
    return 1;
  }
  std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(dict));
  std::ofstream out(positional[1], std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::cerr << "cannot write " << positional[1] << "\n";
    return 1;
  }
  std::cout << tensors->size() << " tensors, one storage\n";
  return 0;
}
