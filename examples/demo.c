/* A small multi-threaded program to trace: each worker sorts a few arrays with a recursive
 * quicksort and checksums them. Build with -finstrument-functions (examples/demo.sh does). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4
#define ARRAYS 20
#define LEN 200

static void swap(int *a, int *b) { int t = *a; *a = *b; *b = t; }

static int partition(int *v, int lo, int hi) {
    int pivot = v[hi], i = lo;
    for (int j = lo; j < hi; j++)
        if (v[j] < pivot) swap(&v[i++], &v[j]);
    swap(&v[i], &v[hi]);
    return i;
}

static void quicksort(int *v, int lo, int hi) {
    if (lo >= hi) return;
    int p = partition(v, lo, hi);
    quicksort(v, lo, p - 1);
    quicksort(v, p + 1, hi);
}

static long checksum(const int *v, int n) {
    long sum = 0;
    for (int i = 0; i < n; i++) sum = sum * 31 + v[i];
    return sum;
}

static void fill(int *v, int n, unsigned *seed) {
    for (int i = 0; i < n; i++) v[i] = rand_r(seed) % 1000;
}

static void *worker(void *arg) {
    unsigned seed = (unsigned)(long)arg;
    int v[LEN];
    long total = 0;
    for (int a = 0; a < ARRAYS; a++) {
        fill(v, LEN, &seed);
        quicksort(v, 0, LEN - 1);
        total += checksum(v, LEN);
    }
    return (void *)total;
}

int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    long total = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        total += (long)r;
    }
    printf("demo: %d threads sorted %d arrays, checksum %ld\n", THREADS, THREADS * ARRAYS, total);
    return 0;
}
