#pragma once
// Clang's thread-safety annotations (https://clang.llvm.org/docs/ThreadSafetyAnalysis.html):
// which mutex guards which member, and which functions must (or must not) be called with it
// held. Clang checks them with -Wthread-safety (the TSan build in scripts/test.sh); other
// compilers see nothing. The lock order itself is in doc/threads.md.

#if defined(__clang__)
#define FFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define FFS_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) FFS_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY FFS_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) FFS_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) FFS_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) FFS_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) FFS_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) FFS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define ACQUIRE(...) FFS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) FFS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) FFS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) FFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) FFS_THREAD_ANNOTATION(assert_capability(x))
#define RETURN_CAPABILITY(x) FFS_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS FFS_THREAD_ANNOTATION(no_thread_safety_analysis)
