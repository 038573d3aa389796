# cmake -DMODE=install|subdirectory -DSOURCE=<milora source> -DBUILD=<milora build> -DWORK=<dir>
#       -DEXPECT_XTENSOR=ON|OFF -DEXPECT_IO=ON|OFF -DEXPECT_CUDA=ON|OFF -P package_test.cmake
file(REMOVE_RECURSE ${WORK})
set(consumer_args)
if(MODE STREQUAL "install")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD} --prefix ${WORK}/prefix
                  RESULT_VARIABLE rc OUTPUT_QUIET)
  if(rc)
    message(FATAL_ERROR "cmake --install failed (${rc})")
  endif()
  set(consumer_args -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  set(consumer_args -DMILORA_SOURCE_DIR=${SOURCE})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${WORK}/build ${consumer_args}
                        -DMILORA_EXPECT_XTENSOR=${EXPECT_XTENSOR} -DMILORA_EXPECT_IO=${EXPECT_IO}
                        -DMILORA_EXPECT_CUDA=${EXPECT_CUDA}
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer (${MODE}) failed")
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
