// The foreverfs command: argument parsing, data directory, wiring of the layers, mount loop.

#define FUSE_USE_VERSION 314
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <syslog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "app/control.h"
#include "app/metrics.h"
#include "base/fd.h"
#include "base/fd_limit.h"
#include "cas/chunk_store.h"
#include "crypto/crypto.h"
#include "fuse/fuse_fs.h"
#include "net/tcp_transport.h"
#include "server/file_server.h"
#include "server/gc.h"
#include "server/identity.h"
#include "server/namespace_db.h"
#include "server/replicator.h"

namespace fs = std::filesystem;
namespace asio = boost::asio;
using namespace foreverfs;

namespace {

constexpr const char* kExamples = R"(
Examples:
  foreverfs keygen ~/cluster.key                     # once; copy the file to every machine
  foreverfs /mnt/fs --listen :3000 --key ~/cluster.key                        # machine 1
  foreverfs /mnt/fs --listen :3000 --peer 10.0.0.1:3000 --key ~/cluster.key   # machines 2, 3
  cp film.mkv /mnt/fs/          # on machine 1
  cat /mnt/fs/film.mkv          # on machine 3: the same bytes
  fusermount3 -u /mnt/fs        # unmount; the process exits 0

  With mount(8): every long option is also a mount option, -o name=value
  mount -t fuse.foreverfs foreverfs /mnt/fs -o listen=:3000,key=/etc/foreverfs/cluster.key
  /etc/fstab line (then `mount /mnt/fs`):
  foreverfs /mnt/fs fuse.foreverfs listen=:3000,peer=10.0.0.1:3000,key=/etc/foreverfs/cluster.key,_netdev 0 0

  Observing a node:
  foreverfs status /mnt/fs --json                   # peers, bytes in/out, backlog, last errors
  getfattr -n user.foreverfs.replicas /mnt/fs/film.mkv   # nodes holding every chunk of it
  getfattr -n user.foreverfs.holders /mnt/fs/film.mkv    # which ones (node id@address)
  foreverfs /mnt/fs --metrics 127.0.0.1:9464 ...    # Prometheus: curl 127.0.0.1:9464/metrics
)";

struct Options {
  std::string mountpoint;
  std::string listen = ":3000";
  std::vector<std::string> peers;
  std::string data;
  std::string key;
  int replicas = 0;
  bool foreground = false;
  std::vector<std::string> fuse_options;
  std::string log_level = "info";
  std::string log_file;
  double fetch_timeout_s = 10;
  double gc_interval_s = 600;
  double tombstone_grace_s = 86400;
  double max_clock_skew_s = 600;
  std::string metrics;  // ADDR:PORT for Prometheus, "" for none
};

fs::path HomeDir() {
  const char* home = std::getenv("HOME");
  return home && *home ? fs::path(home) : fs::path("/root");
}

fs::path XdgDir(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v && *v ? fs::path(v) : HomeDir() / fallback;
}

// "/mnt/fs" -> "mnt-fs", as systemd names mount units.
std::string Escape(const fs::path& p) {
  std::string s = p.string();
  while (!s.empty() && s.front() == '/') s.erase(0, 1);
  for (auto& c : s) {
    if (c == '/') c = '-';
  }
  return s.empty() ? "root" : s;
}

// Options for mount(8), fstab and systemd (mount.fuse3 removes some of them, not all), and
// atime variants and other kernel flags that libfuse would refuse ("unknown option") and that
// mean nothing to foreverfs. nosymfollow and mand are refused rather than silently dropped.
constexpr std::string_view kIgnoredMountOptions[] = {
    "_netdev",    "nofail",   "auto",       "noauto",      "defaults",      "user",
    "users",      "nouser",   "owner",      "group",       "comment",       "diratime",
    "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "iversion", "noiversion", "silent",      "loud",          "nomand"};

// The largest number of seconds any option takes (31 years): converted to nanoseconds it stays
// far below 2^63.
constexpr double kMaxSeconds = 1e9;

bool ParseNumber(const std::string& text, double& out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end && std::isfinite(out) && out >= 0 && out <= kMaxSeconds;
}

// -o name=value for our own options (so /etc/fstab lines work); the rest go to FUSE, except
// the ones meant for mount(8) and systemd, which libfuse would reject. Returns an error
// message, empty if every option is valid.
std::string SplitMountOptions(Options& o, const std::vector<std::string>& raw) {
  std::vector<std::string> fuse;
  for (const auto& group : raw) {
    std::size_t start = 0;
    while (start <= group.size()) {
      auto comma = group.find(',', start);
      std::string opt =
          group.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      start = comma == std::string::npos ? group.size() + 1 : comma + 1;
      if (opt.empty()) continue;
      auto eq = opt.find('=');
      std::string name = opt.substr(0, eq),
                  value = eq == std::string::npos ? "" : opt.substr(eq + 1);
      double number = 0;
      if (name == "listen") {
        o.listen = value;
      } else if (name == "peer") {
        o.peers.push_back(value);
      } else if (name == "data") {
        o.data = value;
      } else if (name == "key") {
        o.key = value;
      } else if (name == "log-level") {
        if (spdlog::level::from_str(value) == spdlog::level::off && value != "off")
          return "log-level=" + value +
                 ": not one of trace, debug, info, warn, error, critical, off";
        o.log_level = value;
      } else if (name == "metrics") {
        o.metrics = value;
      } else if (name == "log-file") {
        o.log_file = value;
      } else if (name == "replicas" || name == "fetch-timeout" || name == "gc-interval" ||
                 name == "max-clock-skew" || name == "tombstone-grace") {
        if (!ParseNumber(value, number) || (name == "replicas" && number != std::floor(number)))
          return opt + ": not a number from 0 to 1e9";
        if (name == "replicas") o.replicas = static_cast<int>(number);
        if (name == "fetch-timeout") o.fetch_timeout_s = number;
        if (name == "gc-interval") o.gc_interval_s = number;
        if (name == "max-clock-skew") o.max_clock_skew_s = number;
        if (name == "tombstone-grace") o.tombstone_grace_s = number;
      } else if (std::find(std::begin(kIgnoredMountOptions), std::end(kIgnoredMountOptions),
                           name) != std::end(kIgnoredMountOptions) ||
                 name.starts_with("x-")) {
        continue;
      } else {
        fuse.push_back(opt);
      }
    }
  }
  o.fuse_options = fuse;
  return "";
}

void SetupLogging(const Options& o) {
  std::shared_ptr<spdlog::logger> logger;
  if (!o.log_file.empty()) {
    logger = spdlog::basic_logger_mt("foreverfs", o.log_file);
  } else {
    logger = spdlog::stderr_color_mt("foreverfs");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  spdlog::flush_on(spdlog::level::info);
}

Result<crypto::ClusterKey> LoadOrCreateKey(const Options& o) {
  fs::path path = o.key;
  if (path.empty()) {
    path = XdgDir("XDG_CONFIG_HOME", ".config") / "foreverfs" / "cluster.key";
    if (!fs::exists(path)) {
      std::error_code ec;
      fs::create_directories(path.parent_path(), ec);
      if (auto s = crypto::WriteNewKeyFile(path); !s.ok()) return s;
      spdlog::info(
          "created a new cluster key at {}; copy it to every machine of the cluster "
          "and pass it with --key",
          path.string());
    }
  }
  return crypto::ReadKeyFile(path);
}

int Keygen(const std::string& file) {
  if (auto s = crypto::WriteNewKeyFile(file); !s.ok()) {
    fmt::print(stderr, "foreverfs keygen: {}\n", s.message());
    return 1;
  }
  fmt::print("wrote a new cluster key to {} (mode 0600); copy it to every machine of the cluster\n",
             file);
  return 0;
}

// The control socket's answers (see app/control.h).
struct Daemon {
  server::FileServer& files;
  server::Replicator& replicator;
  net::TcpTransport& transport;
  asio::io_context& io;
  server::ChunkMaintenance& maintenance;
  app::ChunkUsage& usage;  // DATA/chunks, walked off the event loop
  fs::path data;
  std::string listen;
  int replicas = 0;
  std::chrono::nanoseconds tombstone_grace{0};
};

// Purges the tombstones every member holds and that are older than the grace period (part of
// every gc pass); returns the line for the log or the gc command.
std::string PurgeTombstones(server::FileServer& files, std::chrono::nanoseconds grace) {
  auto r = files.PurgeTombstones(grace);
  if (!r.ok()) {
    spdlog::error("tombstones: {}", r.status().message());
    return "tombstones: purge failed: " + r.status().message();
  }
  std::string line = fmt::format("tombstones: {} inode and {} entry records purged", r->inodes,
                                 r->dentries);
  if (r->waiting > 0 && r->slowest) {
    line += fmt::format(
        "; {} older than the grace period wait for node {:016x}, which has confirmed our changes "
        "up to {} of {}",
        r->waiting, r->slowest->node, r->slowest->confirmed, files.ns().LastSeq());
  }
  if (r->inodes + r->dentries + r->waiting > 0) spdlog::info("{}", line);
  return line;
}

// Runs `fn` on the event thread and waits for it.
template <typename T>
T OnEventThread(asio::io_context& io, std::function<T()> fn) {
  std::promise<T> p;
  auto f = p.get_future();
  asio::post(io, [&] { p.set_value(fn()); });
  return f.get();
}

// The same, giving up after `limit` (a metrics scrape must not hang on a busy event thread).
template <typename T>
std::optional<T> TryOnEventThread(asio::io_context& io, std::function<T()> fn,
                                  std::chrono::milliseconds limit) {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  asio::post(io, [p, fn = std::move(fn)] { p->set_value(fn()); });
  if (f.wait_for(limit) != std::future_status::ready) return std::nullopt;
  return f.get();
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string UtcTime(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Duration(double s) {
  const auto total = static_cast<std::uint64_t>(s);
  if (total < 60) return fmt::format("{}s", total);
  if (total < 3600) return fmt::format("{}m{:02}s", total / 60, total % 60);
  if (total < 86400) return fmt::format("{}h{:02}m", total / 3600, total % 3600 / 60);
  return fmt::format("{}d{:02}h", total / 86400, total % 86400 / 3600);
}

std::string Mib(std::uint64_t b) {
  return fmt::format("{:.1f} MiB", static_cast<double>(b) / kMiB);
}

// Every peer status knows of: connected ones, ones whose link went, and addresses the transport
// dials or that failed a handshake, merged by node id where one is known.
std::vector<server::PeerStatus> AllPeers(Daemon& d) {
  using Row = server::PeerStatus;
  auto [rows, addrs] =
      OnEventThread<std::pair<std::vector<Row>, std::vector<net::TcpTransport::AddrStatus>>>(
          d.io, [&] { return std::make_pair(d.replicator.Peers(true), d.transport.Addresses()); });
  for (const auto& a : addrs) {
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) {
      return (a.node_id != 0 && r.node_id == a.node_id) || (!r.addr.empty() && r.addr == a.addr);
    });
    if (it != rows.end()) {
      if (!a.last_error.empty() && a.last_error_at > it->last_error_at) {
        it->last_error = a.last_error;
        it->last_error_at = a.last_error_at;
      }
      continue;
    }
    Row r;
    r.node_id = a.node_id;
    r.addr = a.addr;
    r.outbound = a.dialing;
    r.last_error = a.last_error;
    r.last_error_at = a.last_error_at;
    rows.push_back(std::move(r));
  }
  return rows;
}

// Live files with a chunk this node does not hold (a manifest walk and one stat per chunk).
std::pair<std::uint64_t, std::uint64_t> FilesMissingChunks(server::FileServer& files) {
  std::uint64_t live = 0, missing = 0;
  auto s = files.ns().ForEachLiveManifest([&](const server::InodeRecord& r) {
    ++live;
    for (const auto& [index, id] : r.manifest) {
      if (!files.HasChunk(id)) {
        ++missing;
        break;
      }
    }
  });
  if (!s.ok()) spdlog::warn("status: walking manifests: {}", s.message());
  return {live, missing};
}

void HandleStatus(Daemon& d, bool json, const std::function<void(const std::string&)>& out) {
  auto peers = AllPeers(d);
  auto [backlog, round] = OnEventThread<std::pair<std::size_t, server::CatchUpStatus>>(
      d.io, [&] { return std::make_pair(d.replicator.Backlog(), d.replicator.CatchUp()); });
  const auto usage = d.usage.Get(std::chrono::minutes(1));  // at most 2 s old
  const auto [live_files, incomplete] = FilesMissingChunks(d.files);
  struct statvfs st {};
  ::statvfs(d.data.c_str(), &st);
  const auto now = std::chrono::system_clock::now();
  auto since = [&](std::chrono::system_clock::time_point t) {
    return std::chrono::duration<double>(now - t).count();
  };
  const double rate = round.seconds > 0 ? round.done / round.seconds : 0;
  const double byte_rate = round.seconds > 0 ? round.bytes / round.seconds : 0;
  if (!json) {
    const double free_gib = static_cast<double>(st.f_bavail) * st.f_frsize / (1 << 30);
    const double total_gib = static_cast<double>(st.f_blocks) * st.f_frsize / (1 << 30);
    out(fmt::format("node        {:016x}", d.files.node_id()));
    out(fmt::format("listening   {}", d.listen));
    out(fmt::format("data        {} ({:.1f} GiB free of {:.1f} GiB)", d.data.string(), free_gib,
                    total_gib));
    out(fmt::format("local       {} chunks, {}", usage.chunks, Mib(usage.bytes)));
    out(fmt::format("changes     {} (local change sequence)", d.files.ns().LastSeq()));
    out(fmt::format("backlog     {} chunks to fetch", backlog));
    if (round.running) {
      out(fmt::format("catch-up    {} of {} chunks ({}), {:.1f} chunks/s, {:.1f} MiB/s, {}",
                      round.done, round.total, Mib(round.bytes), rate, byte_rate / kMiB,
                      Duration(round.seconds)));
    }
    out(fmt::format("files       {} live, {} with chunks missing here{}", live_files, incomplete,
                    d.replicas > 0 ? fmt::format(" (--replicas {}: this node holds only its "
                                                 "share; see user.foreverfs.replicas per file)",
                                                 d.replicas)
                                   : ""));
    std::size_t connected = 0;
    for (const auto& p : peers) connected += p.connected;
    out(fmt::format("peers       {} connected, {} known", connected, peers.size()));
    for (const auto& p : peers) {
      const std::string id = p.node_id ? fmt::format("{:016x}", p.node_id) : "?";
      const std::string addr = p.addr.empty() ? p.remote : p.addr;
      if (p.connected) {
        out(
            fmt::format("  {}  {}  {}  connected since {} ({})  in {}  out {}  backlog {} "
                        "changes to send, {} chunks requested",
                        id, addr, p.outbound ? "dialed" : "accepted", UtcTime(p.connected_since),
                        Duration(since(p.connected_since)), Mib(p.bytes_in), Mib(p.bytes_out),
                        p.changes_to_send, p.chunks_in_flight));
      } else {
        out(fmt::format("  {}  {}  not connected", id, addr));
      }
      if (!p.last_error.empty()) {
        out(fmt::format("      last error: {} ({}, {} ago)", p.last_error, UtcTime(p.last_error_at),
                        Duration(since(p.last_error_at))));
      }
    }
    return;
  }
  std::string j = fmt::format(
      R"({{"node":"{:016x}","listen":{},"data":{},"free_bytes":{},"total_bytes":{},"changes":{},)"
      R"("backlog_chunks":{},"replicas":{},"local":{{"chunks":{},"bytes":{}}},)"
      R"("files":{{"live":{},"missing_chunks_locally":{}}},)"
      R"("catch_up":{{"running":{},"done":{},"total":{},"failed":{},"bytes":{},"seconds":{:.3f},)"
      R"("chunks_per_second":{:.3f},"bytes_per_second":{:.0f}}},"peers":[)",
      d.files.node_id(), JsonString(d.listen), JsonString(d.data.string()),
      static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize,
      static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize, d.files.ns().LastSeq(), backlog,
      d.replicas, usage.chunks, usage.bytes, live_files, incomplete, round.running, round.done,
      round.total, round.failed, round.bytes, round.seconds, rate, byte_rate);
  for (std::size_t i = 0; i < peers.size(); ++i) {
    const auto& p = peers[i];
    j += fmt::format(
        R"({}{{"node":{},"addr":{},"remote":{},"direction":"{}","connected":{},)", i ? "," : "",
        p.node_id ? JsonString(fmt::format("{:016x}", p.node_id)) : "null", JsonString(p.addr),
        JsonString(p.remote), p.outbound ? "dialed" : "accepted", p.connected);
    if (p.connected) {
      j += fmt::format(
          R"("connected_since":"{}","connected_seconds":{:.0f},"bytes_in":{},"bytes_out":{},)"
          R"("backlog":{{"changes_to_send":{},"chunks_requested":{}}},)"
          R"("records_received":{},"peer_seq":{},)",
          UtcTime(p.connected_since), since(p.connected_since), p.bytes_in, p.bytes_out,
          p.changes_to_send, p.chunks_in_flight, p.records_received, p.peer_seq);
    }
    j += p.last_error.empty() ? std::string(R"("last_error":null})")
                              : fmt::format(R"("last_error":{},"last_error_at":"{}"}})",
                                            JsonString(p.last_error), UtcTime(p.last_error_at));
  }
  out(j + "]}");
}

void HandleControl(Daemon& d, const std::string& command,
                   const std::function<void(const std::string&)>& out) {
  if (command == "status" || command == "status-json") {
    HandleStatus(d, command == "status-json", out);
  } else if (command == "scrub") {
    spdlog::info("scrub started");
    auto r = d.maintenance.Scrub([&](const std::string& line) {
      spdlog::info("{}", line);
      out(line);
    });
    if (!r.ok()) out("scrub failed: " + r.status().message());
  } else if (command == "gc") {
    auto r = d.maintenance.Collect();
    if (r.ok()) {
      out(
          fmt::format("gc: {} chunks stored, {} referenced, {} removed, {} unreferenced (removed "
                      "by the next pass)",
                      r->stored, r->referenced, r->removed, r->marked));
    } else {
      out("gc failed: " + r.status().message());
    }
    out(PurgeTombstones(d.files, d.tombstone_grace));
  } else {
    out(fmt::format("unknown command '{}' (status, status-json, scrub, gc)", command));
  }
}

// user.foreverfs.replicas: how many nodes (this one included) hold every chunk of the file's
// current version, as far as this node and its connected peers say within 2 s;
// user.foreverfs.holders: which, as "nodeid@address" separated by commas, this node first.
constexpr std::string_view kReplicasXattr = "user.foreverfs.replicas";
constexpr std::string_view kHoldersXattr = "user.foreverfs.holders";
constexpr auto kHoldersTimeout = std::chrono::milliseconds(2000);

std::optional<Result<Bytes>> ReplicaXattr(server::FileServer& files, server::Replicator& r,
                                          const std::string& self_addr, std::uint64_t ino,
                                          std::string_view name) {
  if (name != kReplicasXattr && name != kHoldersXattr) return std::nullopt;
  auto rec = files.ns().GetInode(ino);
  if (!rec.ok()) return rec.status();
  if (rec->deleted) return Status(Code::kNotFound, "inode is deleted");
  if (rec->kind != server::InodeKind::kFile) {
    return Err(Code::kNoData, "{} is only there for regular files", name);
  }
  const auto report = r.Holders(rec->manifest.Ids(), kHoldersTimeout);
  spdlog::debug(
      "getxattr {} of inode {:016x}: {} chunks, here: {}, {} of {} peers answered, {} "
      "hold them all",
      name, ino, report.chunks, report.local, report.answered, report.asked, report.peers.size());
  std::string value;
  if (name == kReplicasXattr) {
    value = std::to_string((report.local ? 1 : 0) + report.peers.size());
  } else {
    std::vector<std::string> holders;
    if (report.local) holders.push_back(fmt::format("{:016x}@{}", files.node_id(), self_addr));
    for (const auto& h : report.peers)
      holders.push_back(fmt::format("{:016x}@{}", h.node_id, h.addr));
    value = fmt::format("{}", fmt::join(holders, ","));
  }
  return Bytes(value.begin(), value.end());
}

// `foreverfs status|scrub|gc [MOUNTPOINT] [--data DIR]`: the daemon's control socket is
// DIR/control.sock; the mount also names it in the xattr user.foreverfs.control of its root.
int ControlClient(const std::string& command, const std::string& mountpoint,
                  const std::string& data) {
  fs::path socket;
  if (!data.empty()) {
    socket = fs::path(data) / "control.sock";
  } else {
    std::string mp = mountpoint.empty() ? "." : mountpoint;
    char buf[4096];
    ssize_t n = ::getxattr(mp.c_str(), "user.foreverfs.control", buf, sizeof buf - 1);
    if (n <= 0) {
      fmt::print(stderr, "foreverfs {}: {} is not a foreverfs mount (or give --data DIR)\n",
                 command, mp);
      return 2;
    }
    socket = std::string(buf, static_cast<std::size_t>(n));
  }
  auto s = app::RunControlCommand(socket, command,
                                  [](const std::string& line) { fmt::print("{}\n", line); });
  if (!s.ok()) {
    fmt::print(stderr, "foreverfs {}: {}\n", command, s.message());
    return 1;
  }
  return 0;
}

int Serve(Options o) {
  SetupLogging(o);
  const FdLimit fds = RaiseFdLimit();  // every peer and stranger connection holds a descriptor
  if (fds.error) spdlog::warn("open files limit stays {}: {}", fds.before, strerror(fds.error));
  auto fail = [](const std::string& msg) {
    spdlog::error("{}", msg);
    return 1;
  };
  auto key = LoadOrCreateKey(o);
  if (!key.ok()) return fail(key.status().message());

  std::error_code ec;
  fs::path mount_abs = fs::absolute(o.mountpoint, ec);
  fs::path data = o.data.empty()
                      ? XdgDir("XDG_DATA_HOME", ".local/share") / "foreverfs" / Escape(mount_abs)
                      : fs::absolute(o.data, ec);
  for (const char* sub : {"", "chunks", "staging"}) {
    fs::create_directories(data / sub, ec);
    if (ec)
      return fail(
          fmt::format("cannot create data directory {}: {}", (data / sub).string(), ec.message()));
  }
  ::chmod(data.c_str(), 0700);
  UniqueFd lock(::open((data / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid() || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    return fail(
        fmt::format("data directory {} is in use by another foreverfs process", data.string()));
  }

  auto ns = server::NamespaceDb::Open(data / "meta.db");
  if (!ns.ok()) return fail(ns.status().message());
  // A copy of another node's data directory must not run under that node's id (README,
  // "Identity"): it takes a fresh one before anything is written.
  auto identity = server::CheckDataDirIdentity(**ns, data);
  if (!identity.ok()) return fail(identity.status().message());
  if (identity->renewed) {
    spdlog::warn(
        "{}. Node id {:016x} may still be in use by the node this copy was made from, so this "
        "node takes a fresh id, {:016x} (two processes under one id would miss each other's "
        "changes and lose concurrent writes). Records written before keep the old id: they are "
        "history both nodes share; peers stream this node's changes again from the start.",
        identity->why, identity->old_id, (*ns)->node_id());
  }
  auto store = cas::MakeLocalStore(data / "chunks", *key);
  if (!store.ok()) return fail(store.status().message());
  server::FileServer files(**ns, **store, cas::MakeHasher(*key), data / "staging");
  files.SetMaxClockSkew(std::chrono::milliseconds(static_cast<long>(o.max_clock_skew_s * 1000)));

  auto io = std::make_unique<asio::io_context>(1);
  server::ReplicatorOptions ropts;
  ropts.replicas = o.replicas;
  ropts.fetch_timeout = std::chrono::milliseconds(static_cast<long>(o.fetch_timeout_s * 1000));
  auto replicator = std::make_unique<server::Replicator>(*io, files, ropts);
  net::TcpOptions topts;
  topts.node_id = files.node_id();
  // Another process with this node id (a VM snapshot or block copy of the data directory, which
  // the inode check above cannot see): the newer of the two stops and takes a fresh id at its
  // next start; the other goes on. Both refuse the link.
  std::atomic<bool> stopped_as_copy{false};
  std::mutex copy_mu;
  std::string copy_why;  // under copy_mu
  topts.on_same_node_id = [&stopped_as_copy, &copy_mu, &copy_why, data](const net::SameNodeId& s) {
    const std::string where = s.listen_addr.empty() ? s.remote : s.listen_addr;
    if (!s.peer_is_older) {
      spdlog::error(
          "the process at {} runs with this node's id {:016x} and started after this one: its "
          "data directory is a copy of this node's; it stops and takes a fresh id",
          where, s.node_id);
      return;
    }
    if (stopped_as_copy.exchange(true)) return;
    const std::string why = fmt::format(
        "the node at {} runs with this node's id {:016x} and has run longer: this data "
        "directory is a copy of that node's (a VM snapshot or a disk copy)",
        where, s.node_id);
    {
      std::lock_guard lock(copy_mu);
      copy_why = why;
    }
    if (auto st = server::MarkForFreshNodeId(data, why); !st.ok()) {
      spdlog::error("{}", st.message());
    }
    spdlog::error(
        "{}; unmounting and stopping, so that two nodes never write under one id. The "
        "next start takes a fresh node id.",
        why);
    ::kill(::getpid(), SIGTERM);
  };
  topts.listen = o.listen;
  topts.auth_key = crypto::DeriveKey(key->secret, "foreverfs auth v1");
  topts.tls_psk = crypto::DeriveKey(key->secret, "foreverfs tls psk v1");
  auto transport = std::make_unique<net::TcpTransport>(*io, topts, *replicator);
  if (auto s = transport->Listen(); !s.ok()) return fail(s.message());
  replicator->SetDialer([t = transport.get()](const std::string& addr) { t->AddPeer(addr); });
  for (const auto& p : o.peers) {
    if (auto hp = net::ParseHostPort(p); !hp.ok())
      return fail(fmt::format("--peer: {}", hp.status().message()));
    transport->AddPeer(p);
  }
  files.SetRemote(replicator.get());
  files.SetOnLocalChange([r = replicator.get()] { r->NotifyLocalChange(); });

  fuse::FuseFs fuse(files);
  fuse.SetControlPath((data / "control.sock").string());
  app::OpLatency latency(fuse::FuseFs::TimedOpNames());
  fuse.SetOpObserver(
      [&latency](std::size_t op, std::chrono::nanoseconds d) { latency.Observe(op, d); });
  fuse.SetVirtualXattr([&files, r = replicator.get(), self = transport->AdvertisedAddr()](
                           std::uint64_t ino, std::string_view name) {
    return ReplicaXattr(files, *r, self, ino, name);
  });
  app::ChunkUsage usage(data / "chunks");
  std::unique_ptr<app::MetricsServer> metrics;
  if (!o.metrics.empty()) {
    // Rendered on the metrics server's workers: a scrape waits at most 1 s for a walk of chunks/
    // (otherwise it shows the previous one) and 1 s for the event loop.
    auto m = app::MetricsServer::Bind(*io, o.metrics, [&] {
      app::MetricsSnapshot snap;
      const auto usage_now = usage.Get(std::chrono::seconds(1));
      snap.bytes_stored = usage_now.bytes;
      snap.chunks = usage_now.chunks;
      snap.bytes_sent = transport->Totals().BytesOut();
      snap.bytes_received = transport->Totals().BytesIn();
      snap.peers_connected = replicator->PeerCount();
      snap.replication_backlog =
          TryOnEventThread<std::size_t>(
              *io, [&] { return replicator->Backlog(); }, std::chrono::milliseconds(1000))
              .value_or(0);
      return app::RenderMetrics(snap, &latency);
    });
    if (!m.ok()) return fail(m.status().message());
    metrics = std::move(*m);
  }
  files.SetOnRemoteChange([&fuse](const server::ChangeSet& cs) { fuse.Invalidate(cs); });
  if (auto s = fuse.Mount({o.mountpoint, o.fuse_options, 1.0}); !s.ok()) return fail(s.message());
  spdlog::info("foreverfs {} mounted on {} (node {:016x}, listening on {}, data in {})",
               FOREVERFS_VERSION, mount_abs.string(), files.node_id(), transport->AdvertisedAddr(),
               data.string());
  if (!o.foreground) {
    io->notify_fork(asio::io_context::fork_prepare);
    if (fuse_daemonize(0) != 0) return fail("cannot daemonize");
    io->notify_fork(asio::io_context::fork_child);
    // stderr is /dev/null from here on.
    if (o.log_file.empty()) {
      auto syslog = spdlog::syslog_logger_mt("foreverfs-syslog", "foreverfs", LOG_PID, LOG_DAEMON);
      syslog->set_pattern("%v");
      syslog->set_level(spdlog::level::from_str(o.log_level));
      spdlog::set_default_logger(syslog);
    }
  }
  fuse.InstallSignalHandlers();

  auto guard = asio::make_work_guard(*io);
  std::thread net_thread([&io] { io->run(); });

  server::ChunkMaintenance maintenance(files);
  Daemon daemon{files,       *replicator, *transport, *io,
                maintenance, usage,       data,       transport->AdvertisedAddr(),
                o.replicas,  std::chrono::nanoseconds(static_cast<std::int64_t>(
                                 o.tombstone_grace_s * 1e9))};
  if (metrics) {
    metrics->Serve();
    spdlog::info("serving Prometheus metrics on http://{}/metrics", o.metrics);
  }
  // Commands run on the control server's workers, never on the event loop they wait for.
  auto control = app::ControlServer::Start(
      *io, data / "control.sock",
      [&daemon](const std::string& cmd, const std::function<void(const std::string&)>& out) {
        HandleControl(daemon, cmd, out);
      });
  if (!control.ok()) spdlog::warn("no control socket: {}", control.status().message());
  // Garbage collection every --gc-interval seconds (a chunk goes after two passes).
  std::mutex gc_mu;
  std::condition_variable gc_cv;
  bool gc_stop = false;
  std::thread gc_thread([&] {
    std::unique_lock lock(gc_mu);
    const auto interval = std::chrono::milliseconds(static_cast<long>(o.gc_interval_s * 1000));
    while (!gc_cv.wait_for(lock, interval, [&] { return gc_stop; })) {
      lock.unlock();
      if (auto r = maintenance.Collect(); !r.ok()) spdlog::error("gc: {}", r.status().message());
      (void)PurgeTombstones(files, daemon.tombstone_grace);
      lock.lock();
    }
  });

  Status run = fuse.Run();
  {
    std::lock_guard lock(gc_mu);
    gc_stop = true;
  }
  gc_cv.notify_all();
  gc_thread.join();
  if (control.ok()) (*control)->Stop();
  if (metrics) metrics->Stop();
  fuse.Unmount();
  files.SetOnRemoteChange(nullptr);

  asio::post(*io, [t = transport.get()] { t->Stop(); });
  guard.reset();
  io->stop();
  net_thread.join();
  if (control.ok()) control->reset();  // endpoints go before their event loop
  metrics.reset();
  transport.reset();
  replicator.reset();
  io.reset();
  if (!run.ok()) return fail(run.message());
  if (stopped_as_copy) {
    std::lock_guard lock(copy_mu);
    return fail(fmt::format("stopped: {}; start it again to take a fresh node id", copy_why));
  }
  spdlog::info("unmounted {}; bye", mount_abs.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "foreverfs: a FUSE filesystem whose files live in a peer-to-peer, encrypted, "
      "content-addressed store"};
  app.footer(kExamples);
  app.set_version_flag("--version", std::string("foreverfs ") + FOREVERFS_VERSION);
  app.require_subcommand(0, 1);

  std::string keygen_file;
  auto* keygen =
      app.add_subcommand("keygen", "Write a new random cluster key to FILE (never overwrites)");
  keygen->add_option("FILE", keygen_file, "Where to write the key")->required();

  std::string ctl_mount, ctl_data;
  bool json = false;
  auto* status =
      app.add_subcommand("status", "Show the node, its peers, replication backlog and usage");
  status->add_option("MOUNTPOINT", ctl_mount, "A foreverfs mount (default: the current directory)");
  status->add_option("--data", ctl_data, "The node's data directory instead of a mountpoint");
  status->add_flag("--json", json, "Print one JSON object");
  auto* scrub = app.add_subcommand(
      "scrub", "Verify every local chunk and repair bad or missing ones from peers");
  scrub->add_option("MOUNTPOINT", ctl_mount, "A foreverfs mount (default: the current directory)");
  scrub->add_option("--data", ctl_data, "The node's data directory instead of a mountpoint");
  auto* gc = app.add_subcommand("gc", "Run one garbage-collection pass now");
  gc->add_option("MOUNTPOINT", ctl_mount, "A foreverfs mount (default: the current directory)");
  gc->add_option("--data", ctl_data, "The node's data directory instead of a mountpoint");

  Options o;
  std::vector<std::string> raw_opts;
  std::string source;
  app.add_option("SOURCE", source,
                 "Ignored when MOUNTPOINT follows (mount(8) passes the fstab source field); "
                 "alone, it is the MOUNTPOINT");
  app.add_option("MOUNTPOINT", o.mountpoint, "Directory to mount the filesystem on");
  app.add_option("--listen", o.listen, "Address to accept peers on, HOST:PORT or :PORT")
      ->capture_default_str();
  // One value per --peer and per -o, so that a MOUNTPOINT after them is not taken as another.
  app.add_option("--peer", o.peers, "A peer to connect to, HOST:PORT (repeatable)")
      ->allow_extra_args(false);
  app.add_option("--data", o.data,
                 "Data directory (default: ~/.local/share/foreverfs/<mountpoint>)");
  app.add_option("--key", o.key,
                 "Cluster key file (default: ~/.config/foreverfs/cluster.key, created if missing)");
  app.add_option("--replicas", o.replicas, "How many nodes hold each chunk (default 0: every node)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("-f,--foreground", o.foreground, "Stay in the foreground");
  app.add_option("-o", raw_opts,
                 "Mount options: FUSE ones (allow_other, ro, ...) and name=value for the options "
                 "above (listen=, peer=, data=, key=, replicas=, log-level=, log-file=, "
                 "fetch-timeout=, gc-interval=, max-clock-skew=, tombstone-grace=, metrics=); "
                 "_netdev, nofail, "
                 "noauto, x-* and other "
                 "mount(8) options are ignored")
      ->allow_extra_args(false);
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--log-file", o.log_file,
                 "Write the log here instead of stderr (syslog once in the background)");
  app.add_option("--fetch-timeout", o.fetch_timeout_s,
                 "Seconds a read waits for a chunk no local copy has before failing with EIO")
      ->check(CLI::Range(0.0, kMaxSeconds))
      ->capture_default_str();

  app.add_option("--max-clock-skew", o.max_clock_skew_s,
                 "Seconds a peer's clock may be ahead of ours; its changes dated later are "
                 "refused with a log line")
      ->check(CLI::Range(1.0, kMaxSeconds))
      ->capture_default_str();

  app.add_option("--metrics", o.metrics,
                 "Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464)");
  app.add_option("--gc-interval", o.gc_interval_s,
                 "Seconds between garbage-collection passes; an unreferenced chunk is removed by "
                 "the second pass that finds it")
      ->check(CLI::Range(0.0, kMaxSeconds))
      ->capture_default_str();
  app.add_option("--tombstone-grace", o.tombstone_grace_s,
                 "Seconds a deletion's record is kept at least; a gc pass purges it after that "
                 "once every node that ever linked with this one has confirmed it holds it")
      ->check(CLI::Range(0.0, kMaxSeconds))
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (keygen->parsed()) return Keygen(keygen_file);
  if (status->parsed()) return ControlClient(json ? "status-json" : "status", ctl_mount, ctl_data);
  if (scrub->parsed()) return ControlClient("scrub", ctl_mount, ctl_data);
  if (gc->parsed()) return ControlClient("gc", ctl_mount, ctl_data);
  if (o.mountpoint.empty()) o.mountpoint = source;
  if (o.mountpoint.empty()) {
    fmt::print(stderr, "foreverfs: missing MOUNTPOINT\n{}", app.help());
    return 2;
  }
  if (auto error = SplitMountOptions(o, raw_opts); !error.empty()) {
    fmt::print(stderr, "foreverfs: -o {}\n", error);
    return 2;
  }
  return Serve(std::move(o));
}
