// The foreverfs command: argument and -o option parsing, logging, the cluster key, the data
// directory's path; then it runs one app::Node (app/node.h), which owns everything else.
// `status`, `scrub` and `gc` are clients of a running node's control socket.

#include <malloc.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/xattr.h>
#include <syslog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "app/byte_size.h"
#include "app/control.h"
#include "app/node.h"
#include "base/fd_limit.h"
#include "crypto/crypto.h"

namespace fs = std::filesystem;
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
  getfattr -n user.foreverfs.local /mnt/fs/film.mkv      # bytes of it held on this node
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
  int max_links = 8;
  double down_after_s = 900;
  int sync_copies = 0;
  double sync_timeout_s = 30;
  std::uint64_t cache_size = std::uint64_t{1} << 30;
  std::uint64_t capacity = 0;  // --capacity in bytes; 0: the data directory's free space
  double rebalance_interval_s = 30;
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

constexpr const char* kCapacityError =
    "not a size from 1 byte to 2^63-1 (bytes, or a whole number with K, M, G or T: powers of "
    "1024, e.g. 500G)";

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
      } else if (name == "capacity") {
        auto size = app::ParseByteSize(value);
        if (!size || *size == 0) return opt + ": " + kCapacityError;
        o.capacity = *size;
      } else if (name == "cache-size") {
        auto size = app::ParseByteSize(value);
        if (!size) return opt + ": not a size (bytes, or a number with K, M, G or T)";
        o.cache_size = *size;
      } else if (name == "replicas" || name == "fetch-timeout" || name == "gc-interval" ||
                 name == "max-clock-skew" || name == "tombstone-grace" || name == "max-links" ||
                 name == "down-after" || name == "sync-copies" || name == "sync-timeout" ||
                 name == "rebalance-interval") {
        const bool integer = name == "replicas" || name == "max-links" || name == "sync-copies";
        if (!ParseNumber(value, number) || (integer && number != std::floor(number)))
          return opt + ": not a number from 0 to 1e9";
        if (name == "max-links" && number > 1024) return opt + ": at most 1024";
        if (name == "sync-copies" && number > 1024) return opt + ": at most 1024";
        if (name == "sync-timeout" && number < 0.001) return opt + ": at least 0.001";
        if (name == "rebalance-interval" && number < 0.1) return opt + ": at least 0.1";
        if (name == "rebalance-interval") o.rebalance_interval_s = number;
        if (name == "replicas") o.replicas = static_cast<int>(number);
        if (name == "max-links") o.max_links = static_cast<int>(number);
        if (name == "down-after") o.down_after_s = number;
        if (name == "sync-copies") o.sync_copies = static_cast<int>(number);
        if (name == "sync-timeout") o.sync_timeout_s = number;
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
  app::NodeConfig config;
  config.mountpoint = o.mountpoint;
  config.mount_abs = mount_abs;
  config.data = data;
  config.key = *key;
  config.listen = o.listen;
  config.peers = o.peers;
  config.replicas = o.replicas;
  config.fuse_options = o.fuse_options;
  config.metrics = o.metrics;
  config.fetch_timeout_s = o.fetch_timeout_s;
  config.gc_interval_s = o.gc_interval_s;
  config.tombstone_grace_s = o.tombstone_grace_s;
  config.max_clock_skew_s = o.max_clock_skew_s;
  config.max_links = o.max_links;
  config.down_after_s = o.down_after_s;
  config.sync_copies = o.sync_copies;
  config.sync_timeout_s = o.sync_timeout_s;
  config.cache_size = o.cache_size;
  config.capacity = o.capacity;
  config.rebalance_interval_s = o.rebalance_interval_s;
  // Errors return through fail() before `node` is destroyed, as when every part was a local.
  app::Node node(std::move(config));
  if (auto s = node.Start(); !s.ok()) return fail(s.message());
  if (!o.foreground) {
    if (auto s = node.Daemonize(); !s.ok()) return fail(s.message());
    // stderr is /dev/null from here on.
    if (o.log_file.empty()) {
      auto syslog = spdlog::syslog_logger_mt("foreverfs-syslog", "foreverfs", LOG_PID, LOG_DAEMON);
      syslog->set_pattern("%v");
      syslog->set_level(spdlog::level::from_str(o.log_level));
      spdlog::set_default_logger(syslog);
    }
  }
  Status run = node.Run();
  if (!run.ok()) return fail(run.message());
  if (auto why = node.StoppedAsCopy()) {
    return fail(fmt::format("stopped: {}; start it again to take a fresh node id", *why));
  }
  spdlog::info("unmounted {}; bye", mount_abs.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Buffers of 256 KiB and more (chunks are 1 MiB) come from mmap and go back at free. glibc
  // otherwise raises this threshold after the first such free, and from then on megabyte
  // buffers come from each thread's arena and stay there once freed: the daemon's peak RSS
  // grew by 6-8 MiB with every 15 s fio random-write run (46, 54, 60 MiB after three; 23-25
  // MiB with this), each FUSE thread keeping the chunks it had copied into staging. Fixing it
  // also stops glibc raising the trim threshold with it: left at 128 KiB, every freed 128 KiB
  // read reply at the top of a thread's heap was given back (madvise) and faulted in again,
  // six times per chunk of a cold sequential read (707-768 MiB/s against 919-1,029).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
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
                 "fetch-timeout=, gc-interval=, max-clock-skew=, tombstone-grace=, max-links=, "
                 "down-after=, sync-copies=, sync-timeout=, cache-size=, rebalance-interval=, "
                 "capacity=, metrics=); "
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

  app.add_option("--max-links", o.max_links,
                 "Long-lived links this node keeps (others are opened for a moment when needed)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--down-after", o.down_after_s,
                 "Seconds a member may be unreachable before it is down and its chunks are "
                 "placed elsewhere")
      ->check(CLI::Range(1.0, kMaxSeconds))
      ->capture_default_str();

  app.add_option("--sync-copies", o.sync_copies,
                 "fsync returns once the file is durable on this many members, this one "
                 "included (0: 2 when the cluster has two members or more, else 1)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--sync-timeout", o.sync_timeout_s,
                 "Seconds fsync waits for --sync-copies members before it fails with EIO")
      ->check(CLI::Range(0.001, kMaxSeconds))
      ->capture_default_str();

  std::string cache_size_text;
  app.add_option("--cache-size", cache_size_text,
                 "With --replicas N: bytes of copies not ranked here (read on demand, written "
                 "here) kept as a cache, the most recently read first; the rest are dropped once "
                 "their ranked members hold them (K, M, G, T suffixes; default 1G)");
  app.add_option("--rebalance-interval", o.rebalance_interval_s,
                 "Seconds between passes that count under-replicated chunks and drop copies "
                 "not ranked here")
      ->check(CLI::Range(0.1, kMaxSeconds))
      ->capture_default_str();

  std::string capacity_text;
  app.add_option("--capacity", capacity_text,
                 "Bytes of this node's disk the cluster may fill (K, M, G, T suffixes; default: "
                 "the free space of --data at start); sets its share of the chunks with "
                 "--replicas: one weight per 64 GiB, rounded, 1 to 1024");

  std::string remove_id;
  auto* node_cmd = app.add_subcommand("node", "Cluster members");
  auto* node_remove = node_cmd->add_subcommand(
      "remove",
      "Remove a member at once, for good (it leaves placement; only its restart "
      "brings it back)");
  node_remove->add_option("ID", remove_id, "The member's node id (16 hex digits, see status)")
      ->required();
  node_remove->add_option("MOUNTPOINT", ctl_mount,
                          "A foreverfs mount (default: the current directory)");
  node_remove->add_option("--data", ctl_data, "The node's data directory instead of a mountpoint");
  node_cmd->require_subcommand(1);

  CLI11_PARSE(app, argc, argv);
  if (node_remove->parsed()) return ControlClient("node-remove " + remove_id, ctl_mount, ctl_data);
  if (keygen->parsed()) return Keygen(keygen_file);
  if (status->parsed()) return ControlClient(json ? "status-json" : "status", ctl_mount, ctl_data);
  if (scrub->parsed()) return ControlClient("scrub", ctl_mount, ctl_data);
  if (gc->parsed()) return ControlClient("gc", ctl_mount, ctl_data);
  if (o.mountpoint.empty()) o.mountpoint = source;
  if (!cache_size_text.empty()) {
    auto size = app::ParseByteSize(cache_size_text);
    if (!size) {
      fmt::print(stderr,
                 "foreverfs: --cache-size {}: not a size (bytes, or a number with K, M, "
                 "G or T)\n",
                 cache_size_text);
      return 2;
    }
    o.cache_size = *size;
  }
  if (!capacity_text.empty()) {
    auto size = app::ParseByteSize(capacity_text);
    if (!size || *size == 0) {
      fmt::print(stderr, "foreverfs: --capacity {}: {}\n", capacity_text, kCapacityError);
      return 2;
    }
    o.capacity = *size;
  }
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
