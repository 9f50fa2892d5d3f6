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

# The installed command line runs from the prefix alone: no LD_LIBRARY_PATH, its run path finds
# libmoeprune in the prefix and torch's libraries where they are installed.
set(cli "${WORK_DIR}/prefix/bin/moeprune")
if(NOT EXISTS "${cli}")
  message(FATAL_ERROR "the install did not put the command line at ${cli}")
endif()
foreach(args "--help" "inspect;${INSPECT_FIXTURE}")
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH "${cli}" ${args}
                  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "installed 'moeprune ${args}' failed (${result}):\n${out}${err}")
  endif()
  message(STATUS "installed 'moeprune ${args}': ok")
endforeach()
if(NOT out MATCHES "experts")
  message(FATAL_ERROR "installed 'moeprune inspect' printed no MoE layers:\n${out}")
endif()
# No stray run-path entries copied from torch's CMake config (/lib/intel64...).
find_program(READELF readelf)
if(READELF)
  file(GLOB libs "${WORK_DIR}/prefix/lib*/libmoeprune.so*")
  foreach(binary ${cli} ${libs})
    execute_process(COMMAND ${READELF} -d "${binary}" OUTPUT_VARIABLE dynamic)
    if(dynamic MATCHES "intel64|win-x64")
      message(FATAL_ERROR "${binary} carries torch's stray run-path entries:\n${dynamic}")
    endif()
  endforeach()
endif()
set(launcher)
if(COMPILER_LAUNCHER)
  set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${COMPILER_LAUNCHER}")
endif()
run(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix"
    "-DTorch_DIR=${TORCH_PREFIX}" ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
