// The file server over a chunk store that fails on purpose (seeded, deterministic): a full
// disk fails the writer with ENOSPC and damages nothing committed; I/O errors and bit rot
// are reported, never returned as data.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cas/testing/faulty_store.h"
#include "cas/testing/memory_store.h"
#include "server/file_server.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

class FaultyStoreTest : public ::testing::TestWithParam<std::uint64_t> {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ffs_faults_" + std::to_string(::getpid()) + "_" + std::to_string(crypto::RandomU64()));
    fs::create_directories(dir_ / "staging");
    crypto::Key256 key;
    key.fill(3);
    db_ = NamespaceDb::Open(dir_ / "ns.db").value();
    auto faulty = std::make_unique<cas::FaultyChunkStore>(cas::MakeMemoryStore(), GetParam());
    faulty_ = faulty.get();
    // Verification above the faults, as in the program's stack.
    store_ = cas::MakeVerifyingStore(std::move(faulty), cas::ChunkHasher(key));
    files_ = std::make_unique<FileServer>(*db_, *store_, cas::ChunkHasher(key), dir_ / "staging");
  }
  void TearDown() override { fs::remove_all(dir_); }

  Status Put(const std::string& path, const Bytes& data) {
    std::size_t at = 0;
    return files_->Store(path, [&](MutableByteSpan out) -> Result<std::size_t> {
      std::size_t n = std::min(out.size(), data.size() - at);
      std::copy_n(data.begin() + static_cast<long>(at), n, out.begin());
      at += n;
      return n;
    });
  }
  Result<Bytes> Read(const std::string& path) {
    Bytes out;
    auto s = files_->Get(path, [&](ByteSpan b) {
      out.insert(out.end(), b.begin(), b.end());
      return Ok();
    });
    if (!s.ok()) return s;
    return out;
  }
  static Bytes Data(std::size_t n, std::uint8_t seed) {
    Bytes b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i * 7 + seed + (i >> 20));
    return b;
  }

  fs::path dir_;
  std::unique_ptr<NamespaceDb> db_;
  cas::FaultyChunkStore* faulty_ = nullptr;
  std::unique_ptr<cas::ChunkStore> store_;
  std::unique_ptr<FileServer> files_;
};

TEST_P(FaultyStoreTest, AFullDiskFailsTheWriterAndDamagesNothingCommitted) {
  const Bytes kept = Data(3 * cas::kChunkSize + 5, 1);
  ASSERT_TRUE(Put("/kept", kept).ok());
  faulty_->Set({.full = true});
  Status s = Put("/kept", Data(2 * cas::kChunkSize, 2));  // overwrite fails
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.message();
  EXPECT_EQ(ToErrno(s), ENOSPC);
  s = Put("/new", Data(cas::kChunkSize, 3));
  EXPECT_EQ(s.code(), Code::kNoSpace);
  auto back = Read("/kept");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(*back == kept) << "a failed overwrite changed the committed version";
  faulty_->Set({});
  const Bytes later = Data(cas::kChunkSize, 4);
  ASSERT_TRUE(Put("/new", later).ok());
  EXPECT_TRUE(*Read("/new") == later);
}

TEST_P(FaultyStoreTest, ReadErrorsAndBitRotAreReportedNeverReturned) {
  const Bytes data = Data(4 * cas::kChunkSize, 5);
  ASSERT_TRUE(Put("/f", data).ok());
  faulty_->Set({.get_io_error = 0.2, .get_bit_flip = 0.2});
  int ok = 0, failed = 0;
  for (int i = 0; i < 40; ++i) {
    auto r = Read("/f");
    if (r.ok()) {
      ASSERT_TRUE(*r == data) << "read " << i << " returned wrong bytes";
      ++ok;
    } else {
      EXPECT_EQ(ToErrno(r.status()), EIO) << r.status().message();
      ++failed;
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(ok, 0);
  faulty_->Set({});
  EXPECT_TRUE(*Read("/f") == data);
}

TEST_P(FaultyStoreTest, WriteErrorsFailTheCommitAndARetryWorks) {
  faulty_->Set({.put_io_error = 0.5});
  const Bytes data = Data(6 * cas::kChunkSize, 6);
  int attempts = 0;
  Status s;
  do {
    s = Put("/g", data);
    ++attempts;
    if (!s.ok()) {
      EXPECT_EQ(ToErrno(s), EIO);
      auto partial = Read("/g");
      // Nothing or a whole earlier version is visible, never a mix.
      if (partial.ok()) {
        EXPECT_TRUE(partial->empty() || *partial == data);
      }
    }
  } while (!s.ok() && attempts < 200);
  ASSERT_TRUE(s.ok()) << "no attempt succeeded";
  faulty_->Set({});
  EXPECT_TRUE(*Read("/g") == data);
}

// A power failure loses what was not synced. fsync(2) is the promise: what it covered survives;
// a file only closed may lose its new chunks, and then reads fail (EIO) instead of returning
// wrong bytes.
TEST_P(FaultyStoreTest, APowerFailureKeepsWhatFsyncCoveredAndNeverReturnsWrongBytes) {
  auto write = [&](const std::string& name, const Bytes& data, bool sync) {
    auto c = files_->Create(kRootId, name, 0644, 0, 0, O_RDWR);
    EXPECT_TRUE(c.ok()) << c.status().message();
    if (!c.ok()) return;
    auto n = files_->Write(c->handle, 0, data);
    EXPECT_TRUE(n.ok() && *n == data.size());
    Status s = sync ? files_->Fsync(c->handle) : files_->Flush(c->handle);
    EXPECT_TRUE(s.ok()) << s.message();
    files_->Release(c->handle);
  };
  const Bytes synced = Data(2 * cas::kChunkSize + 100, 5);
  write("synced", synced, true);
  EXPECT_EQ(faulty_->LoseUnsynced(), 0u) << "fsync left chunks unsynced";
  auto back = Read("/synced");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(*back == synced);

  const Bytes closed = Data(3 * cas::kChunkSize, 100);  // no chunk in common with `synced`
  write("closed", closed, false);
  EXPECT_EQ(faulty_->LoseUnsynced(), 3u);
  auto lost = Read("/closed");
  ASSERT_FALSE(lost.ok()) << "a file whose chunks were lost read back without an error";
  EXPECT_EQ(ToErrno(lost.status()), EIO) << lost.status().message();
  back = Read("/synced");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(*back == synced) << "losing unsynced chunks damaged a synced file";
}

INSTANTIATE_TEST_SUITE_P(Seeds, FaultyStoreTest, ::testing::Values(1, 2, 3));

}  // namespace
}  // namespace foreverfs::server
