# Installs moeprune from MOEPRUNE_BUILD_DIR into WORK_DIR/prefix, then configures, builds and
# runs the consumer project against that prefix.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGV}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install "${MOEPRUNE_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
set(launcher)
if(COMPILER_LAUNCHER)
  set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${COMPILER_LAUNCHER}")
endif()
run(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix"
    "-DTorch_DIR=${TORCH_PREFIX}" ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
