# fmt comes from Debian (libfmt-dev). Torch's include directory bundles a newer fmt's headers,
# and an -isystem path would shadow Debian's; a build-tree directory holding only a link to
# Debian's headers, given with -I, is searched first, so headers and library agree.
find_package(fmt REQUIRED CONFIG)
get_target_property(_moeprune_fmt_includes fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
if(NOT _moeprune_fmt_includes)
  set(_moeprune_fmt_includes /usr/include)
endif()
list(GET _moeprune_fmt_includes 0 _moeprune_fmt_include)
set(MOEPRUNE_FMT_SHADOW "${CMAKE_BINARY_DIR}/fmt-include")
file(MAKE_DIRECTORY "${MOEPRUNE_FMT_SHADOW}")
file(CREATE_LINK "${_moeprune_fmt_include}/fmt" "${MOEPRUNE_FMT_SHADOW}/fmt" SYMBOLIC)

# moeprune_use_fmt(target [HEADER_ONLY]): HEADER_ONLY for installed programs, so they need no
# libfmt at run time.
function(moeprune_use_fmt target)
  target_include_directories(${target} BEFORE PRIVATE "${MOEPRUNE_FMT_SHADOW}")
  if("HEADER_ONLY" IN_LIST ARGN)
    target_link_libraries(${target} PRIVATE fmt::fmt-header-only)
  else()
    target_link_libraries(${target} PRIVATE fmt::fmt)
  endif()
endfunction()
