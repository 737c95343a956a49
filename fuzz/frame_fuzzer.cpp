// libFuzzer target: arbitrary bytes as a frame from a peer. Decoding must never crash, leak or
// allocate without bound, and whatever decodes must encode back to a frame that decodes to the
// same message.
#include <cstdint>
#include <cstdlib>

#include "net/messages.h"

using namespace foreverfs;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < net::kFrameHeaderSize) return 0;
  ByteSpan bytes(data, size);
  auto header = net::DecodeFrameHeader(bytes.first(net::kFrameHeaderSize));
  if (!header.ok()) return 0;
  ByteSpan payload = bytes.subspan(net::kFrameHeaderSize);
  if (payload.size() > header->length - 2) payload = payload.first(header->length - 2);
  auto message = net::DecodePayload(header->type, payload);
  if (!message.ok()) return 0;
  Bytes again = net::EncodeFrame(*message);
  auto h2 = net::DecodeFrameHeader(ByteSpan(again).first(net::kFrameHeaderSize));
  if (!h2.ok()) std::abort();
  auto m2 = net::DecodePayload(h2->type, ByteSpan(again).subspan(net::kFrameHeaderSize));
  if (!m2.ok() || !(*m2 == *message)) std::abort();
  return 0;
}
