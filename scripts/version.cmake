# Writes generated/pkv/core/version.h from lib/pkv/core/version.h.in with the commit
# the tree is at now: run at configure time and again on every build (target
# pkv_version), so a binary never reports the commit it was configured at. The file is
# rewritten only when its text changes (no rebuild otherwise). A tree with uncommitted
# changes to tracked files gets "-dirty" after the commit; no git: "unknown".
# cmake -DPKV_SOURCE_DIR=... -DPKV_OUTPUT=... -DPROJECT_VERSION=... -P scripts/version.cmake
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${PKV_SOURCE_DIR}
                OUTPUT_VARIABLE PKV_GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
                RESULT_VARIABLE rev_status)
if(NOT rev_status EQUAL 0 OR NOT PKV_GIT_COMMIT)
  set(PKV_GIT_COMMIT "unknown")
else()
  execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${PKV_SOURCE_DIR}
                  OUTPUT_VARIABLE changes OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(changes)
    string(APPEND PKV_GIT_COMMIT "-dirty")
  endif()
endif()
configure_file(${PKV_SOURCE_DIR}/lib/pkv/core/version.h.in ${PKV_OUTPUT} @ONLY)
