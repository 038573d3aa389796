# The layout's rules, checked on the source tree (docs/design.md, "Layers" and "Components"):
#
#   includes  every #include "..." points one way. In include/milora: core <- backend, spectral, io,
#             optim, calibration <- init <- the umbrella headers; distributed sees core and backend;
#             nothing outside milora/. In
#             examples: text/ includes the library and itself; llama/ adds text/; tools/ adds llama/; compare_inits/
#             adds tools/common/; the teaching examples include the library and each other. No
#             file reaches into another top-level folder by a relative path.
#   map       docs/design.md's map of include/milora names every header there, and nothing else.
#
# cmake -DSOURCE=<milora source> -DCHECK=includes|map -P layout_test.cmake
cmake_policy(SET CMP0057 NEW)  # if(IN_LIST)
set(problems)

# The component a quoted include names: "milora/core/x.hpp" -> milora/core, "llama/model.hpp" -> llama.
function(include_target line out)
  string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]+\"([^\"]+)\".*$" "\\1" path "${line}")
  set(${out} "${path}" PARENT_SCOPE)
endfunction()

# Checks the quoted includes of every file matching `globs` (relative to SOURCE; with RECURSE in
# subfolders too) against `allowed`: regular expressions for the paths it may name.
function(check_includes what)
  cmake_parse_arguments(A "RECURSE" "" "GLOBS;ALLOWED" ${ARGN})
  set(files)
  foreach(g ${A_GLOBS})
    if(A_RECURSE)
      file(GLOB_RECURSE found RELATIVE ${SOURCE} ${SOURCE}/${g})
    else()
      file(GLOB found RELATIVE ${SOURCE} ${SOURCE}/${g})
    endif()
    list(APPEND files ${found})
  endforeach()
  foreach(f ${files})
    file(STRINGS ${SOURCE}/${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]+\"")
    foreach(line ${lines})
      include_target("${line}" path)
      set(ok FALSE)
      foreach(pattern ${A_ALLOWED})
        if(path MATCHES "${pattern}")
          set(ok TRUE)
        endif()
      endforeach()
      if(NOT ok)
        list(APPEND problems "${f}: #include \"${path}\" points the wrong way (${what})")
      endif()
    endforeach()
  endforeach()
  set(problems ${problems} PARENT_SCOPE)
endfunction()

if(CHECK STREQUAL "includes")
  set(sibling "^[A-Za-z0-9_]+\\.(hpp|cuh|h)$")  # a file of the same folder
  check_includes("the library's core depends on nothing else" RECURSE GLOBS include/milora/core/*
                 ALLOWED "^milora/core/")
  foreach(layer backend spectral io optim calibration)
    check_includes("milora/${layer} sees the core and itself" RECURSE GLOBS include/milora/${layer}/*
                   ALLOWED "^milora/core/" "^milora/${layer}/")
  endforeach()
  check_includes("the communicators see the core and the CUDA backend (NCCL's stream)" RECURSE GLOBS include/milora/distributed/*
                 ALLOWED "^milora/(core|backend|distributed)/")
  check_includes("init policies see the core, the solvers and the statistics" RECURSE GLOBS include/milora/init/*
                 ALLOWED "^milora/(core|init|spectral|calibration)/")
  check_includes("the umbrella headers see the library" GLOBS include/milora/*.hpp ALLOWED "^milora/")
  check_includes("text depends on the library only" GLOBS examples/text/* ALLOWED "^milora/" "${sibling}")
  check_includes("the reference LLaMA depends on the library and text" GLOBS examples/llama/*
                 ALLOWED "^milora/" "^text/" "${sibling}")
  check_includes("the tools depend on the LLaMA and the library" RECURSE GLOBS examples/tools/*
                 ALLOWED "^milora/" "^llama/" "^common/[a-z_]+\\.hpp$" "${sibling}")
  check_includes("the demo depends on the tools' shared code, the LLaMA and the library"
                 GLOBS examples/compare_inits/* ALLOWED "^milora/" "^llama/" "^tools/common/" "${sibling}")
  check_includes("the teaching examples depend on the library" GLOBS examples/*.cpp examples/*.hpp
                 ALLOWED "^milora/" "${sibling}")
  check_includes("benchmarks link targets, never reach into another folder"
                 GLOBS benchmarks/*.cpp benchmarks/*.hpp ALLOWED "^milora/" "^llama/" "^text/" "^tools/common/" "${sibling}"
                 "^synthetic_weights\\.hpp$")
  check_includes("tests link targets; relative paths stay inside tests/"
                 GLOBS tests/*.cpp tests/*.hpp tests/*/*.cpp tests/*/*.hpp
                 ALLOWED "^milora/" "^llama/" "^text/" "^compare_inits/" "^tools/common/" "^\\.\\./(io|cuda|llama|fuzz|text)/[a-z_]+\\.hpp$"
                 "^\\.\\./[a-z_]+\\.hpp$" "${sibling}")
elseif(CHECK STREQUAL "map")
  file(GLOB_RECURSE headers RELATIVE ${SOURCE}/include/milora ${SOURCE}/include/milora/*)
  file(READ ${SOURCE}/docs/design.md design)
  string(REGEX MATCH "```\ninclude/milora/\n([^`]*)```" map "${design}")
  if(NOT map)
    list(APPEND problems "docs/design.md has no map of include/milora (a code block starting with include/milora/)")
  endif()
  # The map names each file by its path under include/milora, first on its line.
  string(REGEX MATCHALL "\n  [A-Za-z0-9_/.]+\\.(hpp|cuh|cu)" named "${map}")
  set(mapped)
  foreach(n ${named})
    string(STRIP "${n}" n)
    list(APPEND mapped ${n})
  endforeach()
  foreach(h ${headers})
    if(NOT h IN_LIST mapped)
      list(APPEND problems "include/milora/${h} is missing from docs/design.md's map")
    endif()
  endforeach()
  foreach(m ${mapped})
    if(NOT m IN_LIST headers)
      list(APPEND problems "docs/design.md's map names ${m}, which is not under include/milora")
    endif()
  endforeach()
else()
  message(FATAL_ERROR "layout_test.cmake: CHECK must be includes or map")
endif()

if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "layout (${CHECK}):\n  ${text}")
endif()
message(STATUS "layout (${CHECK}): OK")
