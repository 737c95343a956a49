// Micro benchmarks of the per-byte work foreverfs does for every MiB written, read or
// replicated: SHA-256, the chunk id (HMAC-SHA-256), AES-256-GCM, AES-256-CTR (staging), the
// encrypting chunk store over memory, and the frame codec with a 1 MiB chunk. All at 1 MiB,
// reported in bytes/s so they compare with `openssl speed -bytes 1048576` (bench/run.sh).

#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <variant>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "crypto/crypto.h"
#include "net/messages.h"
#include "server/namespace_db.h"
#include "server/staging_file.h"

namespace {

using namespace foreverfs;

constexpr std::size_t kBuf = 1 * kMiB;

Bytes RandomBuffer(std::size_t n) {
  Bytes b(n);
  crypto::RandomBytes(b);
  return b;
}

crypto::ClusterKey TestKey() {
  crypto::ClusterKey k;
  crypto::RandomBytes(k.secret);
  return k;
}

void SetBytes(benchmark::State& state, std::size_t per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(per_iteration));
}

void BM_Sha256(benchmark::State& state) {
  const Bytes data = RandomBuffer(kBuf);
  for (auto _ : state) benchmark::DoNotOptimize(crypto::Sha256::Of(data));
  SetBytes(state, kBuf);
}
BENCHMARK(BM_Sha256);

void BM_ChunkId(benchmark::State& state) {
  const Bytes data = RandomBuffer(kBuf);
  const cas::ChunkHasher hasher = cas::MakeHasher(TestKey());
  for (auto _ : state) benchmark::DoNotOptimize(hasher.IdOf(data));
  SetBytes(state, kBuf);
}
BENCHMARK(BM_ChunkId);

void BM_AeadSeal(benchmark::State& state) {
  const Bytes data = RandomBuffer(kBuf);
  crypto::Key256 key{};
  crypto::RandomBytes(key);
  const crypto::Aead aead(key);
  const std::array<std::uint8_t, crypto::Aead::kNonceSize> nonce{};
  for (auto _ : state) benchmark::DoNotOptimize(aead.Seal(nonce, {}, data));
  SetBytes(state, kBuf);
}
BENCHMARK(BM_AeadSeal);

void BM_AeadOpen(benchmark::State& state) {
  const Bytes data = RandomBuffer(kBuf);
  crypto::Key256 key{};
  crypto::RandomBytes(key);
  const crypto::Aead aead(key);
  const std::array<std::uint8_t, crypto::Aead::kNonceSize> nonce{};
  const Bytes sealed = aead.Seal(nonce, {}, data);
  Bytes out;
  for (auto _ : state) {
    if (!aead.Open(nonce, {}, sealed, out).ok()) state.SkipWithError("open failed");
    benchmark::DoNotOptimize(out.data());
  }
  SetBytes(state, kBuf);
}
BENCHMARK(BM_AeadOpen);

void BM_CtrXor(benchmark::State& state) {
  Bytes data = RandomBuffer(kBuf);
  crypto::Key256 key{};
  crypto::RandomBytes(key);
  const std::array<std::uint8_t, 16> iv{};
  std::uint64_t offset = 0;
  for (auto _ : state) {
    crypto::CtrXor(key, iv, offset, data);
    offset += kBuf;
    benchmark::DoNotOptimize(data.data());
  }
  SetBytes(state, kBuf);
}
BENCHMARK(BM_CtrXor);

// A staging file (in /dev/shm, so the figure is the encryption and bookkeeping, not the disk):
// rewriting the same 16 MiB in writes of state.range(0) bytes at random aligned offsets, each a
// fresh generation, then reading back. Per byte written and read.
void BM_StagingRewrite(benchmark::State& state) {
  const auto dir = std::filesystem::exists("/dev/shm") ? std::filesystem::path("/dev/shm")
                                                       : std::filesystem::temp_directory_path();
  auto f = server::StagingFile::Create(dir);
  if (!f.ok()) {
    state.SkipWithError(f.status().message().c_str());
    return;
  }
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  constexpr std::uint64_t kSpan = 16 << 20;
  Bytes data = RandomBuffer(n), back(n);
  std::uint64_t x = 88172645463325252ull;
  for (auto _ : state) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const std::uint64_t off = x % (kSpan / n) * n;
    (void)f->Write(off, data);
    (void)f->Read(off, back);
    benchmark::DoNotOptimize(back.data());
  }
  SetBytes(state, n);
}
BENCHMARK(BM_StagingRewrite)->Arg(4096)->Arg(1 << 20);

// Id + Put of new content, as a write does: what it costs above the disk (id, the store's
// own id check, per-chunk key, seal, copies).
// Every iteration changes the first 8 bytes so the store never deduplicates.
void BM_StorePut(benchmark::State& state) {
  Bytes data = RandomBuffer(kBuf);
  const crypto::ClusterKey key = TestKey();
  const cas::ChunkHasher hasher = cas::MakeHasher(key);
  auto store = cas::MakeVerifyingStore(
      cas::MakeEncryptingStore(cas::MakeMemoryStore(), crypto::DeriveKey(key.secret, "bench")),
      hasher);
  std::uint64_t n = 0;
  for (auto _ : state) {
    std::memcpy(data.data(), &n, sizeof n);
    ++n;
    const cas::ChunkId id = hasher.IdOf(data);
    if (!store->Put(id, data).ok()) state.SkipWithError("put failed");
    state.PauseTiming();
    (void)store->Remove(id);  // keep memory flat
    state.ResumeTiming();
  }
  SetBytes(state, kBuf);
}
BENCHMARK(BM_StorePut);

// Get: what a cold read costs above the disk (open, verify the id).
void BM_StoreGet(benchmark::State& state) {
  const Bytes data = RandomBuffer(kBuf);
  const crypto::ClusterKey key = TestKey();
  const cas::ChunkHasher hasher = cas::MakeHasher(key);
  auto store = cas::MakeVerifyingStore(
      cas::MakeEncryptingStore(cas::MakeMemoryStore(), crypto::DeriveKey(key.secret, "bench")),
      hasher);
  const cas::ChunkId id = hasher.IdOf(data);
  if (!store->Put(id, data).ok()) state.SkipWithError("put failed");
  for (auto _ : state) {
    Result<Bytes> got = store->Get(id);
    if (!got.ok()) state.SkipWithError("get failed");
    benchmark::DoNotOptimize(got);
  }
  SetBytes(state, kBuf);
}
BENCHMARK(BM_StoreGet);

void BM_EncodeChunkFrame(benchmark::State& state) {
  net::ChunkReply reply{.request_id = 7, .found = true, .data = RandomBuffer(kBuf)};
  const net::Message m = reply;
  for (auto _ : state) benchmark::DoNotOptimize(net::EncodeFrame(m));
  SetBytes(state, kBuf);
}
BENCHMARK(BM_EncodeChunkFrame);

void BM_DecodeChunkFrame(benchmark::State& state) {
  const net::Message m =
      net::ChunkReply{.request_id = 7, .found = true, .data = RandomBuffer(kBuf)};
  const Bytes frame = net::EncodeFrame(m);
  const ByteSpan all(frame);
  for (auto _ : state) {
    Result<net::FrameHeader> h = net::DecodeFrameHeader(all.first(net::kFrameHeaderSize));
    if (!h.ok()) state.SkipWithError("header");
    Result<net::Message> got = net::DecodePayload(h->type, all.subspan(net::kFrameHeaderSize));
    if (!got.ok()) state.SkipWithError("payload");
    benchmark::DoNotOptimize(got);
  }
  SetBytes(state, kBuf);
}
BENCHMARK(BM_DecodeChunkFrame);

// One namespace commit, as every create, chmod, chown, utimes and close does: a file's inode
// record updated in SQLite (WAL, synchronous=NORMAL) on the disk of /var/tmp.
void BM_NamespaceCommit(benchmark::State& state) {
  const std::filesystem::path dir =
      std::filesystem::path("/var/tmp") / ("ffs_micro_" + std::to_string(crypto::RandomU64()));
  std::filesystem::create_directories(dir);
  {
    auto db = server::NamespaceDb::Open(dir / "meta.db");
    if (!db.ok()) {
      state.SkipWithError("open");
      return;
    }
    model::InodeRecord rec;
    rec.id = 12345;
    rec.mode = 0644;
    for (int i = 0; i < 4; ++i) rec.manifest.Set(i, crypto::Digest{1});
    std::uint64_t hlc = 1;
    for (auto _ : state) {
      rec.version = {++hlc, 1};
      rec.mtime_ns = static_cast<std::int64_t>(hlc);
      auto won = (*db)->Apply({{rec}, {}});
      if (!won.ok()) state.SkipWithError("apply");
    }
  }
  std::filesystem::remove_all(dir);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NamespaceCommit);

}  // namespace

BENCHMARK_MAIN();
