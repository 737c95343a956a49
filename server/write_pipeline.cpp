#include "server/write_pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>

namespace foreverfs::server {
namespace {

bool AllZero(ByteSpan b) {
  return std::all_of(b.begin(), b.end(), [](std::uint8_t c) { return c == 0; });
}

}  // namespace

WritePipeline::~WritePipeline() {
  (void)Reap(0, [](std::uint64_t, const Result<cas::ChunkId>&, const Bytes&) { return Ok(); });
  Drop();
}

// A chunk's buffer starts small and then takes the whole megabyte in one step: most files
// are small (tar's come in 10 KiB writes), and a megabyte reserved for each would be an mmap
// and a munmap per file.
constexpr std::size_t kFirstReserve = 64 * 1024;

void WritePipeline::Append(ByteSpan data) {
  if (buf_.size() + data.size() > buf_.capacity()) buf_.reserve(cas::kChunkSize);
  buf_.insert(buf_.end(), data.begin(), data.end());
}

bool WritePipeline::Start(std::uint64_t i, ByteSpan data) {
  if (!slot_) {
    if (!host_.TakeSeqBuffer()) return false;  // memory stays bounded: many writers use staging
    slot_ = true;
  }
  index_ = i;
  buf_.reserve(data.size() <= kFirstReserve ? kFirstReserve : cas::kChunkSize);
  buf_.assign(data.begin(), data.end());
  return true;
}

void WritePipeline::Submit(std::uint64_t len, bool background) {
  const std::uint64_t i = index_;
  buf_.resize(static_cast<std::size_t>(len), 0);  // zeros up to its length in the file
  auto data = std::make_shared<Bytes>();
  data->swap(buf_);
  buf_.swap(spare_);  // a buffer whose pages are already there, if there is one
  buf_.clear();
  index_ = kNone;
  auto id = std::make_shared<std::promise<Result<cas::ChunkId>>>();
  inflight_.push_back({i, data, id->get_future()});
  // The job lets go of the buffer before the result is ready, so that Reap finds itself its
  // only holder and keeps it as the spare: otherwise every other chunk took a fresh megabyte
  // (an mmap and 256 page faults).
  auto store = StoreChunkJob(host_, std::move(data), std::move(id));
  if (background) {
    host_.PostStore(store);  // overlaps with the writer's next chunk
  } else {
    store();
  }
}

std::function<void()> StoreChunkJob(FileHost& host, std::shared_ptr<Bytes> data,
                                    std::shared_ptr<std::promise<Result<cas::ChunkId>>> id) {
  return [&host, data = std::move(data), id = std::move(id)]() mutable {
    Result<cas::ChunkId> stored = cas::kHoleId;
    // Nothing may escape: on the store queue's threads an exception would end the process.
    try {
      if (!AllZero(*data)) {
        const cas::ChunkId chunk = host.ChunkIdOf(*data);
        Status s = host.PutChunk(chunk, *data);
        stored = s.ok() ? Result<cas::ChunkId>(chunk) : Result<cas::ChunkId>(s);
      }
    } catch (const std::exception& e) {
      stored = Status(Code::kIOError, fmt::format("storing a chunk failed: {}", e.what()));
    } catch (...) {
      stored = Status(Code::kIOError, "storing a chunk failed");
    }
    data.reset();
    id->set_value(std::move(stored));
  };
}

void WritePipeline::Drop() {
  index_ = kNone;
  if (!slot_) return;
  slot_ = false;
  Bytes().swap(buf_);
  Bytes().swap(spare_);
  host_.ReturnSeqBuffer();
}

Status WritePipeline::Reap(std::size_t keep, const Landed& landed) {
  Status first = Ok();
  while (!inflight_.empty() &&
         (inflight_.size() > keep ||
          inflight_.front().id.wait_for(std::chrono::seconds(0)) == std::future_status::ready)) {
    InFlight job = std::move(inflight_.front());
    inflight_.pop_front();
    Result<cas::ChunkId> id = job.id.get();
    if (auto s = landed(job.index, id, *job.data); !s.ok() && first.ok()) first = s;
    if (job.data.use_count() == 1 && spare_.capacity() == 0) spare_.swap(*job.data);
  }
  return first;
}

const Bytes* WritePipeline::Gathered(std::uint64_t i) const {
  const Bytes* gathered = i == index_ ? &buf_ : nullptr;
  for (const auto& job : inflight_) {
    if (job.index == i) gathered = job.data.get();
  }
  return gathered;
}

bool WritePipeline::InFlightAt(std::uint64_t offset, std::uint64_t end) const {
  constexpr std::uint64_t kCS = cas::kChunkSize;
  for (const auto& job : inflight_) {
    if (job.index * kCS < end && offset < (job.index + 1) * kCS) return true;
  }
  return false;
}

std::uint64_t WritePipeline::NextAtOrAfter(std::uint64_t i) const {
  std::uint64_t next = kNone;
  if (index_ != kNone && index_ >= i) next = index_;
  for (const auto& job : inflight_) {
    if (job.index >= i) next = std::min(next, job.index);
  }
  return next;
}

}  // namespace foreverfs::server
