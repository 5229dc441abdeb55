/* The C test drivers' one assertion: print where and exit non-zero (the pytest runner in
 * tests/test_c_asan.py reports the output). */
#ifndef SSB_TEST_CHECK_H
#define SSB_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);              \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

#endif
