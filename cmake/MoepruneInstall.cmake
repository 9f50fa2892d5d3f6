include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS moeprune EXPORT moepruneTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY moeprune DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")

set(MOEPRUNE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/moeprune)
install(EXPORT moepruneTargets NAMESPACE moeprune:: DESTINATION ${MOEPRUNE_CMAKE_DIR})
configure_package_config_file(cmake/moepruneConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/moepruneConfig.cmake
                              INSTALL_DESTINATION ${MOEPRUNE_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/moepruneConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/moepruneConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/moepruneConfigVersion.cmake
        DESTINATION ${MOEPRUNE_CMAKE_DIR})
