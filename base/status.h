#pragma once
// Errors as values across layer boundaries. A Status names what failed (path, chunk or peer)
// in its message; the FUSE edge turns its code into an errno in exactly one place.

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

// The project namespace is foreverfs, not ffs: glibc declares `int ffs(int)` in <strings.h>
// (pulled in by <cstring>, fmt, Asio, GoogleTest), and a namespace cannot share that name.
namespace foreverfs {

enum class Code {
  kOk = 0,
  kNotFound,      // ENOENT
  kExists,        // EEXIST
  kNotDir,        // ENOTDIR
  kIsDir,         // EISDIR
  kNotEmpty,      // ENOTEMPTY
  kInvalid,       // EINVAL
  kNameTooLong,   // ENAMETOOLONG
  kPermission,    // EACCES
  kNoSpace,       // ENOSPC
  kCorruption,    // EIO: bytes do not match their hash or tag
  kIOError,       // EIO
  kUnavailable,   // EIO after no peer could serve
  kTimedOut,      // ETIMEDOUT
  kBadHandle,     // EBADF
  kNotSupported,  // EOPNOTSUPP
  kNoData,        // ENODATA: no such extended attribute
  kNotPermitted,  // EPERM: the operation is not allowed on this kind of file
  kRange,         // ERANGE: a value does not fit
  kTooBig,        // EFBIG: past the largest file size (or data) a file may have
  kNoPosition,    // ENXIO: no data (or hole) at or after an offset
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const { return ok() ? std::string("ok") : message_; }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status Ok() { return {}; }

template <typename... Args>
Status Err(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

// Maps an errno from a system call to a Status naming what was being done.
inline Status ErrnoStatus(int err, std::string_view what) {
  Code c = Code::kIOError;
  switch (err) {
    case ENOENT:
      c = Code::kNotFound;
      break;
    case EEXIST:
      c = Code::kExists;
      break;
    case ENOTDIR:
      c = Code::kNotDir;
      break;
    case EISDIR:
      c = Code::kIsDir;
      break;
    case ENOTEMPTY:
      c = Code::kNotEmpty;
      break;
    case EINVAL:
      c = Code::kInvalid;
      break;
    case ENAMETOOLONG:
      c = Code::kNameTooLong;
      break;
    case EACCES:
      c = Code::kPermission;
      break;
    case EPERM:
      c = Code::kNotPermitted;
      break;
    case ENOSPC:
    case EDQUOT:
      c = Code::kNoSpace;
      break;
    case ETIMEDOUT:
      c = Code::kTimedOut;
      break;
    default:
      break;
  }
  return Status(c, fmt::format("{}: {}", what, std::strerror(err)));
}

// The errno a local filesystem would give for this status.
inline int ToErrno(const Status& s) {
  switch (s.code()) {
    case Code::kOk:
      return 0;
    case Code::kNotFound:
      return ENOENT;
    case Code::kExists:
      return EEXIST;
    case Code::kNotDir:
      return ENOTDIR;
    case Code::kIsDir:
      return EISDIR;
    case Code::kNotEmpty:
      return ENOTEMPTY;
    case Code::kInvalid:
      return EINVAL;
    case Code::kNameTooLong:
      return ENAMETOOLONG;
    case Code::kPermission:
      return EACCES;
    case Code::kNoSpace:
      return ENOSPC;
    case Code::kTimedOut:
      return ETIMEDOUT;
    case Code::kBadHandle:
      return EBADF;
    case Code::kNotSupported:
      return EOPNOTSUPP;
    case Code::kNoData:
      return ENODATA;
    case Code::kNotPermitted:
      return EPERM;
    case Code::kRange:
      return ERANGE;
    case Code::kTooBig:
      return EFBIG;
    case Code::kNoPosition:
      return ENXIO;
    case Code::kCorruption:
    case Code::kIOError:
    case Code::kUnavailable:
      return EIO;
  }
  return EIO;
}

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace foreverfs
