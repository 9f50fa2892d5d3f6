# Finds LibTorch inside PyPI's torch wheel: asks the Python that has torch for
# torch.utils.cmake_prefix_path and adds it to CMAKE_PREFIX_PATH. Set MOEPRUNE_PYTHON (or Torch_DIR)
# to choose; scripts/setup passes the virtual environment it made.
if(NOT Torch_DIR)
  if(NOT MOEPRUNE_PYTHON)
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
    set(MOEPRUNE_PYTHON "${Python3_EXECUTABLE}")
  endif()
  execute_process(
    COMMAND "${MOEPRUNE_PYTHON}" -c "import torch, torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _moeprune_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_VARIABLE _moeprune_torch_error RESULT_VARIABLE _moeprune_torch_result)
  if(NOT _moeprune_torch_result EQUAL 0)
    message(FATAL_ERROR "moeprune: '${MOEPRUNE_PYTHON}' cannot import torch (${_moeprune_torch_error}). "
                        "Run ./scripts/setup, or pass -DMOEPRUNE_PYTHON=/path/to/python-with-torch "
                        "or -DTorch_DIR=...")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_moeprune_torch_prefix}")
endif()
