#pragma once
// A fresh directory under the system temp directory, removed with everything in it when the
// object goes away. Shared by the unit tests of every layer.

#include <unistd.h>

#include <filesystem>
#include <string>

#include "crypto/crypto.h"

namespace foreverfs::test {

class TempDir {
 public:
  TempDir()
      : path_(std::filesystem::temp_directory_path() /
              ("ffs_test_" + std::to_string(::getpid()) + "_" +
               std::to_string(crypto::RandomU64()))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace foreverfs::test
