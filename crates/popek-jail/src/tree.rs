//! A seccomp allow-list as a binary search over syscall numbers. seccompiler compiles a list
//! into a linear chain of comparisons; the kernel runs a new filter once per syscall number to
//! build its action cache, so a 150-call chain cost popek exec half a millisecond at start-up.
//! A search tree decides any number in about a dozen instructions. Argument conditions stay
//! with seccompiler (separate, small filters; the kernel applies the strictest answer).

use seccompiler::{sock_filter, BpfProgram};

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA: a 32-bit forward jump
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// `seccomp_data.nr` and `seccomp_data.arch`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// x32 syscalls have this bit set; none is allowed.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
/// Numbers a leaf compares one by one.
const LEAF: usize = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The filter: x86-64 syscalls whose number is in `nrs` are allowed, everything else (other
/// numbers, x32 and i386 calls) traps.
pub fn allow_tree(nrs: &[i64]) -> BpfProgram {
    let mut sorted: Vec<u32> = nrs.iter().map(|&n| n as u32).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut prog = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_TRAP),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, RET_TRAP),
    ];
    prog.extend(subtree(&sorted));
    prog
}

/// Code deciding a number known to lie in the range `nrs` covers (or outside all of them).
fn subtree(nrs: &[u32]) -> Vec<sock_filter> {
    if nrs.len() <= LEAF {
        // jeq a -> allow; jeq b -> allow; ...; trap; allow
        let mut code = Vec::with_capacity(nrs.len() + 2);
        for (i, &n) in nrs.iter().enumerate() {
            code.push(jump(JEQ_K, n, (nrs.len() - i) as u8, 0));
        }
        code.push(stmt(RET_K, RET_TRAP));
        code.push(stmt(RET_K, RET_ALLOW));
        return code;
    }
    let mid = nrs.len() / 2;
    let (left, right) = (subtree(&nrs[..mid]), subtree(&nrs[mid..]));
    let mut code = Vec::with_capacity(2 + left.len() + right.len());
    match u8::try_from(left.len()) {
        Ok(skip) => code.push(jump(JGE_K, nrs[mid], skip, 0)),
        // Conditional jumps reach 255 instructions; past that, through an unconditional one.
        Err(_) => {
            code.push(jump(JGE_K, nrs[mid], 0, 1));
            code.push(stmt(JA, left.len() as u32));
        }
    }
    code.extend(left);
    code.extend(right);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions the tree uses.
    fn run(prog: &[sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = if i.k == OFFSET_ARCH { arch } else { nr },
                JEQ_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if acc >= i.k { i.jt } else { i.jf } as usize,
                JA => pc += i.k as usize,
                RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn decides_every_number_like_the_list() {
        for n in [0usize, 1, 3, 4, 5, 9, 40, 151, 450] {
            let list: Vec<i64> = (0..n as i64).map(|i| i * 7 % 460).collect();
            let prog = allow_tree(&list);
            for nr in 0..600u32 {
                let want = if list.contains(&(nr as i64)) {
                    RET_ALLOW
                } else {
                    RET_TRAP
                };
                assert_eq!(
                    run(&prog, AUDIT_ARCH_X86_64, nr),
                    want,
                    "{n} calls, nr {nr}"
                );
                assert_eq!(
                    run(&prog, AUDIT_ARCH_X86_64, nr | X32_SYSCALL_BIT),
                    RET_TRAP
                );
            }
            // i386 calls (int 0x80) never pass, whatever their number.
            assert_eq!(run(&prog, 3 | 0x4000_0000, 1), RET_TRAP);
        }
    }

    #[test]
    fn any_number_is_decided_in_a_few_instructions() {
        let list: Vec<i64> = (0..151).map(|i| i * 3).collect();
        let prog = allow_tree(&list);
        assert!(prog.len() < 330, "{}", prog.len());
        // Depth: 6 header instructions, log2(151 / 4) comparisons, at most 4 leaf tests.
        let steps = |nr: u32| {
            let (mut pc, mut n) = (6usize, 0);
            while prog[pc].code != RET_K {
                let i = &prog[pc];
                pc += 1 + match i.code {
                    JEQ_K => (if nr == i.k { i.jt } else { i.jf }) as usize,
                    JGE_K => (if nr >= i.k { i.jt } else { i.jf }) as usize,
                    _ => i.k as usize,
                };
                n += 1;
            }
            n
        };
        assert!((0..500).map(steps).max().unwrap() <= 12);
    }
}
