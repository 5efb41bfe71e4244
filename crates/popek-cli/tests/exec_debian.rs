//! `popek exec` on real programs nobody here wrote: Debian trixie's riscv64 busybox, lua5.4,
//! sqlite3 and python3.13, from the root `guests/build-exec-root` builds. Each workload runs under
//! popek and under qemu-riscv64 (the reference) on the same input; stdout and exit status must
//! be the same.
//!
//! Each run gets a fresh working directory of its own inside the root's /tmp (the programs use
//! relative paths there, which both VMs resolve the same way: popek inside the root, QEMU on the
//! host, where that directory is the same one).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The root built by guests/build-exec-root (same default as the script).
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = match std::env::var_os("POPEK_EXEC_ROOT") {
            Some(r) => PathBuf::from(r),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
                            .join(".cache")
                    });
                cache.join("popek/roots/trixie-exec")
            }
        };
        assert!(
            root.join("VERSION").is_file(),
            "popek exec's Debian test root is missing or incomplete at {} (no VERSION file): \
             run guests/build-exec-root (scripts/test does)",
            root.display()
        );
        root.canonicalize().unwrap()
    })
}

/// A fresh, empty working directory for one run: ROOT/tmp/popek-debian-TEST-VM.
fn workdir(test: &str, vm: &str) -> PathBuf {
    let d = root()
        .join("tmp")
        .join(format!("popek-debian-{test}-{vm}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run with a time limit (coreutils `timeout`), stdin closed, in `dir`, with only the
/// environment given.
fn run_in(cmd: &Command, dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut t = Command::new("timeout");
    t.args(["-k", "5", "300"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = t
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    assert_ne!(
        out.status.code(),
        Some(124),
        "{:?} {:?} timed out",
        cmd.get_program(),
        cmd.get_args()
    );
    out
}

/// Exit status as a shell reports it (128 + signal for a killed process).
fn status(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// qemu-riscv64's absolute path (the programs QEMU runs have a PATH of their own).
fn qemu_exe() -> &'static str {
    static EXE: OnceLock<String> = OnceLock::new();
    EXE.get_or_init(|| {
        Command::new("sh")
            .args(["-c", "command -v qemu-riscv64"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| text(&o.stdout).trim().to_string())
            .unwrap_or_else(|| panic!("qemu-riscv64 not found: run scripts/install-deps"))
    })
}

/// A host directory of wrappers, one for each program in the root's /usr/bin, each running the
/// root's program under qemu-riscv64. It is the PATH of programs QEMU runs: qemu-user passes a
/// guest's execve to the host kernel, which would run the host's own `sort` or `sqlite3` (or fail
/// on a riscv64 file without binfmt_misc), so a busybox shell under QEMU finds these instead.
fn qemu_bin() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let qemu = qemu_exe();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-debian-qemu-bin");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(root().join("usr/bin")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            let w = dir.join(&name);
            std::fs::write(
                &w,
                format!(
                    "#!/bin/sh\nexec {qemu} -L '{r}' -0 /usr/bin/{name} '{r}/usr/bin/{name}' \"$@\"\n",
                    r = root().display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    })
}

/// One program run: PROG (a guest path) with ARGS and extra environment ENV, in a fresh working
/// directory holding FILES (name, contents).
#[derive(Default)]
struct Run<'a> {
    test: &'a str,
    prog: &'a str,
    args: &'a [&'a str],
    files: &'a [(&'a str, &'a str)],
    env: &'a [(&'a str, &'a str)],
}

impl Run<'_> {
    fn go(&self, vm: &str) -> Output {
        let dir = workdir(self.test, vm);
        for (name, body) in self.files {
            std::fs::write(dir.join(name), body).unwrap();
        }
        let qemu_path = qemu_bin().display().to_string();
        let (mut c, path) = if vm == "popek" {
            let mut c = common::popek();
            c.arg("exec").arg("--root").arg(root()).arg(self.prog);
            (c, "/usr/bin:/bin")
        } else {
            let mut c = Command::new(qemu_exe());
            c.arg("-L").arg(root()).arg("-0").arg(self.prog);
            c.arg(root().join(self.prog.trim_start_matches('/')));
            (c, qemu_path.as_str())
        };
        c.args(self.args);
        let mut env = vec![("PATH", path), ("HOME", "/nonexistent"), ("LC_ALL", "C")];
        env.extend(self.env.iter().copied());
        let o = run_in(&c, &dir, &env);
        let _ = std::fs::remove_dir_all(&dir);
        o
    }

    /// Run under QEMU and popek; stdout and exit status must match. Returns popek's output.
    fn same_as_qemu(&self) -> Output {
        let q = self.go("qemu");
        let p = self.go("popek");
        let what = format!("{} {:?}", self.prog, self.args);
        assert_eq!(
            text(&p.stdout),
            text(&q.stdout),
            "{what}: stdout differs from qemu-riscv64\npopek stderr:\n{}\nqemu stderr:\n{}",
            text(&p.stderr),
            text(&q.stderr)
        );
        assert_eq!(
            status(&p),
            status(&q),
            "{what}: exit status differs from qemu-riscv64\npopek stderr:\n{}\nqemu stderr:\n{}",
            text(&p.stderr),
            text(&q.stderr)
        );
        let err = text(&p.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("unsupported syscall"),
            "{what}: {err}"
        );
        p
    }
}

fn busybox_sh(test: &str, script: &str) -> Output {
    Run {
        test,
        prog: "/usr/bin/busybox",
        args: &["sh", "-c", script],
        ..Default::default()
    }
    .same_as_qemu()
}

#[test]
fn debian_busybox_shell() {
    let p = busybox_sh(
        "shell",
        r#"
        set -u
        square() { echo $(( $1 * $1 )); }
        total=0
        for i in 1 2 3 4 5 6 7 8 9 10; do
            total=$(( total + $(square $i) ))
        done
        echo "sum of squares: $total"
        words="alpha beta gamma delta"
        n=0
        for w in $words; do n=$((n + 1)); echo "$n:$w:${#w}"; done
        case "$(echo hello | tr a-z A-Z)" in HELLO) echo upper ok ;; *) echo upper bad ;; esac
        i=0; while [ $i -lt 5 ]; do i=$((i + 1)); [ $i -eq 3 ] && continue; printf '%d ' $i; done; echo
        echo "nested: $(echo "$(echo inner | rev)" | tr e E)"
        cat <<EOF | sed 's/^/| /'
here-doc line one
total is $total
EOF
        echo one two three | { read a b c; echo "$c $b $a"; }
        ( exit 7 ); echo "subshell status $?"
        false || echo "or-list ran"
        true && echo "and-list ran"
        sh -c 'exit 42'; echo "child status $?"
        sh -c 'kill -TERM $$'; echo "killed child status $?"
        echo "pipe status: $(false | true; echo $?)"
        exit 5
        "#,
    );
    assert_eq!(status(&p), 5);
    let out = text(&p.stdout);
    assert!(out.contains("sum of squares: 385\n"), "{out}");
    assert!(out.contains("child status 42\n"), "{out}");
    assert!(out.contains("killed child status 143\n"), "{out}");
}

#[test]
fn debian_busybox_text_tools() {
    let p = busybox_sh(
        "text",
        r#"
        set -e
        # A deterministic input: 5000 lines of pseudo-random words (a 32-bit LCG in awk).
        awk 'BEGIN { s = 12345; split("red green blue cyan magenta yellow black white", w, " ");
                     for (i = 1; i <= 5000; i++) { s = (s * 1103515245 + 12345) % 2147483648;
                         printf "%d %s %s\n", i, w[int(s / 65536) % 8 + 1], w[int(s / 7) % 8 + 1] } }' >words.txt
        wc -l <words.txt
        wc words.txt
        cut -d' ' -f2 words.txt | sort | uniq -c | sort -k1,1nr -k2
        awk '{ n[$2 "-" $3]++ } END { for (k in n) print k, n[k] }' words.txt | sort | head -5
        sed -n 's/^\([0-9]*7\) red \(.*\)$/\2 at \1/p' words.txt | head -5
        tr 'a-z' 'A-Z' <words.txt | grep -c 'BLUE'
        sort -t' ' -k3,3 -k1,1n words.txt | tail -3
        sha256sum words.txt
        md5sum words.txt
        gzip -c words.txt >words.txt.gz
        gzip -dc words.txt.gz | sha256sum
        gzip -dc words.txt.gz | cmp - words.txt && echo "gzip round trip ok"
        mkdir -p tree/a/b tree/c
        for f in tree/one tree/a/two tree/a/b/three tree/c/four; do echo "$f" >"$f"; done
        ln -s ../one tree/c/link
        find tree | sort
        find tree -type f -name 't*' | sort
        find tree -type l | xargs -n1 readlink
        cat $(find tree -type f | sort) | wc -c
        seq 1 20 | awk '{ s += $1 } END { print s }'
        printf '%s\n' b a c a b a | sort | uniq -d
        od -An -tx1 -N8 words.txt
        head -c 1000 words.txt | tail -c 40
        "#,
    );
    let out = text(&p.stdout);
    assert!(out.starts_with("5000\n"), "{out}");
    assert!(out.contains("gzip round trip ok\n"), "{out}");
}

#[test]
fn debian_busybox_large_pipe() {
    // 8 MiB through a pipe between processes, compressed and back.
    let p = busybox_sh(
        "pipe",
        "dd if=/dev/zero bs=65536 count=128 2>/dev/null | tr '\\0' 'x' | gzip -1 | gzip -dc | sha256sum; \
         yes popek | head -n 100000 | sort -u | wc -l",
    );
    assert_eq!(
        text(&p.stdout),
        "0c77bc0a0795a93612d45256897456d0fcb24f151c44c150d07ecd03f4ef5168  -\n1\n"
    );
}

const LUA: &str = r#"
-- string operations
local s = "The quick brown fox jumps over the lazy dog"
print(#s, s:upper(), s:reverse():sub(1, 10))
local words = {}
for w in s:gmatch("%a+") do words[#words + 1] = w:lower() end
table.sort(words)
print(table.concat(words, ","))
print(s:gsub("o", "0"))
print(string.format("%5.2f|%-6s|%x|%q", math.pi, "ab", 48879, "a\nb"))

-- closures
local function counter(step)
  local n = 0
  return function() n = n + step; return n end
end
local c1, c2 = counter(1), counter(10)
c1(); c1(); c2()
print("counters", c1(), c2())

-- tables and metatables
local V = {}
V.__index = V
V.__add = function(a, b) return setmetatable({x = a.x + b.x, y = a.y + b.y}, V) end
V.__tostring = function(v) return "(" .. v.x .. "," .. v.y .. ")" end
local v = setmetatable({x = 1, y = 2}, V) + setmetatable({x = 3, y = 4}, V)
print("vector", tostring(v))

-- prime sieve
local function sieve(n)
  local is = {}
  for i = 2, n do is[i] = true end
  for i = 2, math.floor(math.sqrt(n)) do
    if is[i] then for j = i * i, n, i do is[j] = false end end
  end
  local count, last = 0, 0
  for i = 2, n do if is[i] then count = count + 1; last = i end end
  return count, last
end
print("primes", sieve(200000))

-- coroutines, integer/float arithmetic, errors
local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i * i) end end)
print("coroutine", gen(), gen(), gen())
print("ints", 7 // 2, 7 % -3, 2^53, math.maxinteger, 1e300 * 1e10, -7 // 2.0)
local ok, err = pcall(function() error({code = 42}) end)
print("pcall", ok, err.code)
local fib = {}
local function f(n) if n < 2 then return n end
  if fib[n] then return fib[n] end
  local r = f(n - 1) + f(n - 2); fib[n] = r; return r end
print("fib", f(90))
local h = 0
for i = 1, 300000 do h = (h * 31 + i) % 1000000007 end
print("hash", h)
os.exit(3)
"#;

#[test]
fn debian_lua() {
    let p = Run {
        test: "lua",
        prog: "/usr/bin/lua5.4",
        args: &["script.lua"],
        files: &[("script.lua", LUA)],
        ..Default::default()
    }
    .same_as_qemu();
    assert_eq!(status(&p), 3);
    let out = text(&p.stdout);
    assert!(out.contains("primes\t17984\t199999\n"), "{out}");
    assert!(out.contains("fib\t2880067194370816120\n"), "{out}");
}

#[test]
fn debian_lua_error_status() {
    let p = Run {
        test: "luaerr",
        prog: "/usr/bin/lua5.4",
        args: &["-e", "print('before'); local t = nil; print(t.x)"],
        ..Default::default()
    }
    .same_as_qemu();
    assert_eq!(status(&p), 1);
    assert!(text(&p.stderr).contains("attempt to index"));
}

#[test]
fn debian_sqlite3() {
    // Two processes on one database file: the first creates and fills it in a transaction,
    // the second queries it.
    let fill = r#"
        CREATE TABLE sales(id INTEGER PRIMARY KEY, region TEXT, item TEXT, qty INTEGER, price REAL);
        BEGIN;
        INSERT INTO sales(region, item, qty, price) VALUES ('north', 'apple', 3, 0.5), ('south', 'pear', 1, 0.75);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
        INSERT INTO sales(region, item, qty, price)
            SELECT CASE i % 4 WHEN 0 THEN 'north' WHEN 1 THEN 'south' WHEN 2 THEN 'east' ELSE 'west' END,
                   CASE i % 3 WHEN 0 THEN 'apple' WHEN 1 THEN 'pear' ELSE 'plum' END,
                   (i * 7919) % 13 + 1, ((i * 104729) % 1000) / 100.0
            FROM n;
        COMMIT;
        CREATE INDEX by_region ON sales(region);
        SELECT count(*) FROM sales;
    "#;
    let query = r#"
        SELECT region, count(*), sum(qty), printf('%.2f', sum(qty * price)) FROM sales
            GROUP BY region ORDER BY region;
        SELECT item, max(qty), min(price), group_concat(DISTINCT qty % 3) FROM sales
            GROUP BY item HAVING count(*) > 100 ORDER BY 2 DESC, 1;
        SELECT region, item, avg(qty) FROM sales WHERE id % 97 = 0 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 5;
        PRAGMA integrity_check;
    "#;
    // sqlite3 runs three times from a busybox shell, on one database file; the SQL travels in
    // the environment.
    let p = Run {
        test: "sqlite",
        prog: "/usr/bin/busybox",
        args: &[
            "sh",
            "-c",
            "sqlite3 test.db \"$FILL\" && sqlite3 -header -separator ' | ' test.db \"$QUERY\" && \
             ls test.db && sqlite3 test.db 'SELECT nonsense FROM nowhere'; echo \"error status $?\"",
        ],
        env: &[("FILL", fill), ("QUERY", query)],
        ..Default::default()
    }
    .same_as_qemu();
    let out = text(&p.stdout);
    assert!(out.starts_with("5002\nregion | count(*) |"), "{out}");
    assert!(out.contains("ok\ntest.db\nerror status 1\n"), "{out}");
}

const PYTHON: &str = r#"
import hashlib, json, re, sys, struct, math, collections

data = {"name": "popek", "ids": list(range(5)), "nested": {"pi": math.pi, "ok": True, "none": None}}
text = json.dumps(data, sort_keys=True, indent=1)
print(text)
back = json.loads(text)
print(back == data, back["nested"]["pi"])
print(hashlib.sha256(text.encode()).hexdigest())
print(hashlib.md5(b"abc" * 1000).hexdigest(), hashlib.sha1(b"").hexdigest())
log = "2024-01-05 ERROR disk full; 2024-02-11 WARN slow; 2024-03-07 ERROR net down"
for m in re.finditer(r"(\d{4})-(\d\d)-(\d\d) (ERROR|WARN) ([a-z ]+)", log):
    print(m.group(4), m.group(2), m.group(5).strip())
print(re.sub(r"(\w+)@(\w+)\.com", r"\2 at \1", "mail bob@example.com or amy@test.com"))
words = collections.Counter(re.findall(r"[a-z]+", log.lower()))
print(sorted(words.items())[:6])
print(struct.pack("<IdH", 0xdeadbeef, 1.5, 7).hex())
print(sum(i * i for i in range(100000)), 2 ** 200 % 1000007, f"{math.e:.12f}")
print(sorted({(i * 7919) % 101 for i in range(1000)})[:10])
sys.exit(4)
"#;

#[test]
fn debian_python3() {
    if !root().join("usr/bin/python3").exists() {
        panic!(
            "{} has no /usr/bin/python3: rebuild it with guests/build-exec-root --force",
            root().display()
        );
    }
    let p = Run {
        test: "python",
        prog: "/usr/bin/python3",
        args: &["-I", "script.py"],
        files: &[("script.py", PYTHON)],
        ..Default::default()
    }
    .same_as_qemu();
    assert_eq!(status(&p), 4);
    let out = text(&p.stdout);
    assert!(out.contains("True 3.141592653589793\n"), "{out}");
    assert!(out.contains("ERROR 03 net down\n"), "{out}");
}

/// `popek exec` puts the guest's address space at 1 GiB on the host (where the JIT folds its
/// base into loads' and stores' displacements): the host's map of a running popek shows the
/// guest's busybox at 1 GiB + its guest address.
#[test]
fn exec_places_the_address_space_at_one_gib() {
    let mut child = common::popek()
        .args(["exec", "--root"])
        .arg(root())
        .args(["/bin/busybox", "sleep", "5"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let busybox = loop {
        let text = std::fs::read_to_string(&maps).unwrap_or_default();
        // The first line that maps busybox (popek maps the program from the root).
        let line = text
            .lines()
            .find(|l| l.ends_with("/usr/bin/busybox"))
            .map(String::from);
        if let Some(l) = line {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "busybox never mapped: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let start = u64::from_str_radix(busybox.split('-').next().unwrap(), 16).unwrap();
    // busybox is a static non-PIE program linked at 0x10000.
    assert_eq!(start, (1 << 30) + 0x10000, "{busybox}");
}
