# The package as a downstream project meets it (tests/consumer):
#   install        cmake --install, then find_package(milora CONFIG REQUIRED COMPONENTS ...) asking for
#                  every component this build provides (and for the others as optional: their
#                  milora_<c>_FOUND must be false); the consumer is built and run, CUDA included
#   fetchcontent   README's FetchContent example, pointed at this source tree
#                  (FETCHCONTENT_SOURCE_DIR_MILORA), built and run on the CPU
#   subdirectory   add_subdirectory(milora), built and run on the CPU
#   components     configure only: an unknown component and a component this build lacks
#                  (xtensor, switched off by the consumer) must fail find_package with a message
#                  that names them; the same asked for as optional must only set _FOUND false
#
# cmake -DMODE=... -DSOURCE=<milora source> -DBUILD=<milora build> -DWORK=<dir>
#       -DEXPECT_XTENSOR=ON|OFF -DEXPECT_IO=ON|OFF -DEXPECT_CUDA=ON|OFF -P package_test.cmake
file(REMOVE_RECURSE ${WORK})

function(install_milora)
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD} --prefix ${WORK}/prefix RESULT_VARIABLE rc OUTPUT_QUIET)
  if(rc)
    message(FATAL_ERROR "cmake --install failed (${rc})")
  endif()
endfunction()

# Configures the consumer with `args`; rc and the output come back in <prefix>_rc / <prefix>_out.
function(configure_consumer prefix build)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${build} ${ARGN}
                          -DMILORA_EXPECT_XTENSOR=${EXPECT_XTENSOR} -DMILORA_EXPECT_IO=${EXPECT_IO}
                          -DMILORA_EXPECT_CUDA=${EXPECT_CUDA}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(${prefix}_rc ${rc} PARENT_SCOPE)
  set(${prefix}_out "${out}${err}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "components")
  install_milora()
  set(prefix -DCMAKE_PREFIX_PATH=${WORK}/prefix)
  configure_consumer(unknown ${WORK}/unknown ${prefix} -DCONSUMER_COMPONENTS=io,wavelets)
  if(NOT unknown_rc OR NOT unknown_out MATCHES "'wavelets' is not a component of milora")
    message(FATAL_ERROR "an unknown component must fail find_package, naming it (rc ${unknown_rc}):\n${unknown_out}")
  endif()
  configure_consumer(lacking ${WORK}/lacking ${prefix} -DMILORA_USE_XTENSOR=OFF -DCONSUMER_COMPONENTS=xtensor)
  if(NOT lacking_rc OR NOT lacking_out MATCHES "component 'xtensor' needs xtensor and xtensor-blas")
    message(FATAL_ERROR "a component this build lacks must fail find_package, naming it (rc ${lacking_rc}):\n${lacking_out}")
  endif()
  configure_consumer(optional ${WORK}/optional ${prefix} -DMILORA_USE_XTENSOR=OFF -DCONSUMER_OPTIONAL_COMPONENTS=xtensor
                     -DCONSUMER_CONFIGURE_ONLY=ON)
  if(optional_rc)
    message(FATAL_ERROR "an optional component this build lacks must only set milora_xtensor_FOUND false:\n${optional_out}")
  endif()
  message(STATUS "components: unknown and missing ones fail clearly, optional ones set _FOUND")
  return()
endif()

if(MODE STREQUAL "install")
  install_milora()
  configure_consumer(consumer ${WORK}/build -DCMAKE_PREFIX_PATH=${WORK}/prefix)
elseif(MODE STREQUAL "fetchcontent")
  configure_consumer(consumer ${WORK}/build -DCONSUMER_FETCHCONTENT=ON -DFETCHCONTENT_SOURCE_DIR_MILORA=${SOURCE}
                     -DCONSUMER_SKIP_CUDA=ON)
else()
  configure_consumer(consumer ${WORK}/build -DMILORA_SOURCE_DIR=${SOURCE} -DCONSUMER_SKIP_CUDA=ON)
endif()
if(consumer_rc)
  message(FATAL_ERROR "configuring the consumer (${MODE}) failed:\n${consumer_out}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer (${MODE}) failed")
endif()
execute_process(COMMAND ${WORK}/build/consumer WORKING_DIRECTORY ${WORK} RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the consumer (${MODE}) ran but failed")
endif()
message(STATUS "consumer via ${MODE}: OK")
