/* Hide AVX-512 and VNNI from a process: `LD_PRELOAD=isa_mask.so python ...`.
 *
 * Why: int8 speed hangs on the CPU's dot-product instructions (issue 13 measured the
 * plane student at 0.09 of the teacher's time with VNNI and 0.29 without), and a bench
 * box rarely is every kind of CPU. With CPUID faulting (Linux's ARCH_SET_CPUID, the
 * `cpuid_fault` flag, as rr uses it) every CPUID instruction of this process traps; the
 * handler runs the real one and clears the AVX-512, AVX-VNNI and AMX bits, so XNNPACK's
 * and OpenCV's dispatch choose the AVX2 kernels an AVX2-only EPYC (Zen 2/3) would run.
 * It is this core's clock and caches with AVX2's instructions, not that CPU.
 *
 * Threads made after the constructor inherit the fault setting; a child exec()s with it
 * reset, but LD_PRELOAD brings the constructor back. Only SIGSEGVs raised by a CPUID
 * instruction are handled; any other fault gets the default action (a core dump).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int faulting = 0;

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void hide(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c,
                 uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) |
                (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, INT8 */
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 4) | (1u << 5) | (1u << 23));  /* AVX_VNNI, AVX512_BF16, AVX_IFMA */
        *d &= ~((1u << 4) | (1u << 5));               /* AVX_VNNI_INT8, AVX_NE_CONVERT */
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* not CPUID: let the fault be a fault */
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    hide(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void isa_mask_init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    if (sigaction(SIGSEGV, &sa, 0) == 0 && set_cpuid(0) == 0)
        faulting = 1;
}

/* What this process's CPUID now shows: bit 0 AVX-512F, bit 1 AVX-512 VNNI, bit 2
 * AVX-VNNI, bit 3 AVX2, bit 8 "the mask is on". The bench checks it before trusting a run. */
int isa_mask_seen(void) {
    uint32_t a, b, c, d, a1 = 0, b1, c1, d1;
    __cpuid_count(7, 0, a, b, c, d);
    if (a >= 1)
        __cpuid_count(7, 1, a1, b1, c1, d1);
    return (int)(((b >> 16) & 1) | (((c >> 11) & 1) << 1) | (((a1 >> 4) & 1) << 2) |
                 (((b >> 5) & 1) << 3) | (faulting << 8));
}
