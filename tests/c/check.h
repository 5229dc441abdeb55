/* The C test drivers' one assertion: print where and exit non-zero (the pytest runner in
 * tests/test_c_asan.py reports the output); and their random numbers. */
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

/* The drivers' random numbers: xorshift64 (Marsaglia 2003), one fixed-seed stream per driver
 * process, uniform in [0, 1). */
static inline double check_urand(void)
{
    static unsigned long long s = 88172645463325252ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / 9007199254740992.0;
}

#endif
