// Cluster key files: 64 lowercase hex digits and a newline, mode 0600, owned by the user that
// runs the daemon. The key itself never
// appears in a message.

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "base/fd.h"
#include "crypto/crypto.h"

namespace foreverfs::crypto {
namespace {

constexpr std::size_t kKeyFileSize = 65;  // 64 hex digits + '\n'

Status WriteAll(int fd, const std::string& data, const std::filesystem::path& path) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, fmt::format("writing key file '{}'", path.string()));
    }
    done += static_cast<std::size_t>(n);
  }
  return Ok();
}

}  // namespace

Status WriteNewKeyFile(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    int err = errno;
    if (err == EEXIST) {
      return Err(Code::kExists, "key file '{}' already exists; refusing to overwrite it",
                 path.string());
    }
    return ErrnoStatus(err, fmt::format("creating key file '{}'", path.string()));
  }
  ClusterKey key;
  RandomBytes(key.secret);
  std::string text = ToHex(key.secret) + "\n";
  OPENSSL_cleanse(key.secret.data(), key.secret.size());
  Status s = WriteAll(fd.get(), text, path);
  OPENSSL_cleanse(text.data(), text.size());
  if (s.ok() && ::fsync(fd.get()) != 0) {
    s = ErrnoStatus(errno, fmt::format("syncing key file '{}'", path.string()));
  }
  if (!s.ok()) {
    // Leave no half-written key behind: the next attempt would refuse to overwrite it.
    fd.reset();
    ::unlink(path.c_str());
    return s;
  }
  // Make the directory entry durable too.
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.valid()) (void)::fsync(dfd.get());
  return Ok();
}

Result<ClusterKey> ReadKeyFile(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid() && errno == ELOOP) {
    // A symlink to a key is fine; its target's mode is what is checked below.
    fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (!fd.valid()) {
    int err = errno;
    if (err == ENOENT) {
      return Err(Code::kNotFound, "key file '{}' does not exist", path.string());
    }
    if (err == EACCES || err == EPERM) {
      return Err(Code::kPermission, "key file '{}' is not readable: {}", path.string(),
                 std::strerror(err));
    }
    return ErrnoStatus(err, fmt::format("opening key file '{}'", path.string()));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, fmt::format("checking key file '{}'", path.string()));
  }
  if (!S_ISREG(st.st_mode)) {
    return Err(Code::kInvalid, "key file '{}' is not a regular file", path.string());
  }
  if ((st.st_mode & 077) != 0) {
    return Err(Code::kPermission,
               "Permissions {:04o} for '{}' are too open: the cluster key must be readable by its "
               "owner only (chmod 600 {})",
               st.st_mode & 07777, path.string(), path.string());
  }
  // As ssh for private keys: a key someone else owns could be replaced by them at any time (or
  // was left behind by another account), so it is not this daemon's to trust.
  if (st.st_uid != ::geteuid()) {
    return Err(Code::kPermission,
               "key file '{}' is owned by uid {}, not by uid {} that runs foreverfs: refusing a "
               "cluster key another user controls (chown {} {})",
               path.string(), st.st_uid, ::geteuid(), ::geteuid(), path.string());
  }
  // Read one byte more than a valid file holds so that trailing garbage is detected.
  char buf[kKeyFileSize + 1];
  std::size_t got = 0;
  while (got < sizeof buf) {
    ssize_t n = ::read(fd.get(), buf + got, sizeof buf - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      OPENSSL_cleanse(buf, sizeof buf);
      return ErrnoStatus(err, fmt::format("reading key file '{}'", path.string()));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  std::string_view text(buf, got);
  bool well_formed = got == kKeyFileSize && text.back() == '\n';
  for (std::size_t i = 0; well_formed && i + 1 < kKeyFileSize; ++i) {
    char c = text[i];
    well_formed = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  }
  std::optional<Digest> secret;
  if (well_formed) secret = DigestFromHex(text.substr(0, 64));
  OPENSSL_cleanse(buf, sizeof buf);
  if (!secret) {
    return Err(Code::kInvalid,
               "key file '{}' is malformed: expected 64 lowercase hex digits and a newline",
               path.string());
  }
  ClusterKey key;
  key.secret = *secret;
  OPENSSL_cleanse(secret->data(), secret->size());
  return key;
}

}  // namespace foreverfs::crypto
