/* ssb_pairwise.h - numpy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src: 8
 * accumulators up to 128 values, halves above), so that a C sum equals np.add.reduce's bit for
 * bit. One copy for the controller's C (ssb_thermal.c) and the emulator's (ssb_plant.c). */
#ifndef SSB_PAIRWISE_H
#define SSB_PAIRWISE_H

#include <stddef.h>

#define SSB_PAIRWISE_BLOCKSIZE 128 /* numpy's PW_BLOCKSIZE */

static inline double ssb_pairwise_sum(const double *a, size_t n)
{
    if (n < 8) {
        double res = 0.0;
        for (size_t i = 0; i < n; i++)
            res += a[i];
        return res;
    }
    if (n <= SSB_PAIRWISE_BLOCKSIZE) {
        double r[8];
        size_t i;
        for (size_t j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (size_t j = 0; j < 8; j++)
                r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return ssb_pairwise_sum(a, n2) + ssb_pairwise_sum(a + n2, n - n2);
}

#endif
