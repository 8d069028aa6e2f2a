/* clock.h: which clock for what. The wall clock is for what people read
 * (status, checkpoint times); timeouts, retries and waits use the monotonic
 * clock, which a step of the wall clock (NTP, `date -s`) does not move. */
#ifndef SPES_CORE_CLOCK_H
#define SPES_CORE_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* spes_now_ms returns wall-clock milliseconds since the epoch. */
uint64_t spes_now_ms(void);

/* spes_mono_ms returns milliseconds on the monotonic clock. */
uint64_t spes_mono_ms(void);

/* spes_mono_s returns seconds on the monotonic clock (for measuring durations). */
double spes_mono_s(void);

/* spes_cond_init_mono initialises a condition variable whose timed waits
 * take monotonic deadlines (see spes_mono_deadline). */
int spes_cond_init_mono(pthread_cond_t *cv);

/* spes_mono_deadline sets *ts to ms milliseconds from now on the monotonic clock. */
void spes_mono_deadline(struct timespec *ts, long ms);

#endif
