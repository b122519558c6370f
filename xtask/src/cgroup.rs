//! CPU quotas and CPU accounting for the benchmarks' service processes, with
//! the cgroup v1 `cpu` and `cpuacct` controllers (issue 11): each API or
//! worker process runs in a group of its own under
//! `/sys/fs/cgroup/{cpu,cpuacct}/xtask-bench-<pid>/`, whose
//! `cpu.cfs_quota_us` = F × `cpu.cfs_period_us` caps it at F cores and whose
//! `cpuacct.usage` (ns) is its CPU time. A process enters its group before
//! its first instruction: it is started through a two-line `sh` wrapper that
//! writes its own pid to the groups' `cgroup.procs` and then `exec`s the
//! binary, so its threads are born inside. The groups are removed when
//! [`Cgroups`] is dropped (any process still in one is moved back to the root
//! first).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";
const CPUACCT_ROOT: &str = "/sys/fs/cgroup/cpuacct";

/// The run's parent groups and the groups made under them.
pub struct Cgroups {
    cpu: PathBuf,
    acct: PathBuf,
    groups: Vec<Group>,
    period_us: u64,
}

/// One process's group: the `cpu` directory (quota) and the `cpuacct` one (usage).
#[derive(Clone, Debug)]
pub struct Group {
    cpu: PathBuf,
    acct: PathBuf,
    period_us: u64,
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl Cgroups {
    /// The run's parent groups, under the cgroup v1 mounts; one line of error
    /// where the controllers are missing or not writable.
    pub fn new() -> anyhow::Result<Cgroups> {
        Self::under(Path::new(CPU_ROOT), Path::new(CPUACCT_ROOT))
    }

    fn under(cpu_root: &Path, acct_root: &Path) -> anyhow::Result<Cgroups> {
        if !cpu_root.join("cpu.cfs_quota_us").exists() {
            bail!(
                "--worker-cpu/--api-cpu need the cgroup v1 cpu controller at {} (no cpu.cfs_quota_us there)",
                cpu_root.display()
            );
        }
        // `cpu,cpuacct` co-mounted: the same directory serves both.
        let acct_root = if cpu_root.join("cpuacct.usage").exists() {
            cpu_root
        } else {
            acct_root
        };
        if !acct_root.join("cpuacct.usage").exists() {
            bail!(
                "--worker-cpu/--api-cpu need the cgroup v1 cpuacct controller at {} (no cpuacct.usage there)",
                acct_root.display()
            );
        }
        let period_us: u64 = std::fs::read_to_string(cpu_root.join("cpu.cfs_period_us"))
            .context("reading cpu.cfs_period_us")?
            .trim()
            .parse()
            .context("cpu.cfs_period_us")?;
        let name = format!("xtask-bench-{}", std::process::id());
        let (cpu, acct) = (cpu_root.join(&name), acct_root.join(&name));
        for dir in [&cpu, &acct] {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "--worker-cpu/--api-cpu: cannot create the cgroup {} (run as root?)",
                    dir.display()
                )
            })?;
        }
        Ok(Cgroups {
            cpu,
            acct,
            groups: Vec::new(),
            period_us,
        })
    }

    /// A new group `name` (unique in the run) capped at `cores` (None: no cap).
    pub fn group(&mut self, name: &str, cores: Option<f64>) -> anyhow::Result<Group> {
        let g = Group {
            cpu: self.cpu.join(name),
            acct: self.acct.join(name),
            period_us: self.period_us,
        };
        for dir in [&g.cpu, &g.acct] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
        }
        g.set_quota(cores)?;
        self.groups.push(g.clone());
        Ok(g)
    }

    /// Writes the wrapper that starts `bin` inside the groups named by the
    /// environment variable `XTASK_CGROUPS` (space-separated directories).
    pub fn wrapper(dir: &Path, bin: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("in-cgroup.sh");
        let bin = bin.to_string_lossy().replace('\'', r"'\''");
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nfor d in $XTASK_CGROUPS; do echo $$ > \"$d/cgroup.procs\" || exit 97; done\nexec '{bin}' \"$@\"\n"
            ),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

impl Group {
    /// Caps the group at `cores` of CPU (None: unlimited).
    pub fn set_quota(&self, cores: Option<f64>) -> anyhow::Result<()> {
        let quota = match cores {
            Some(f) if f > 0.0 => ((f * self.period_us as f64).round() as i64).max(1000).to_string(),
            _ => "-1".to_owned(),
        };
        write(&self.cpu.join("cpu.cfs_quota_us"), &quota)
    }

    /// The value of `XTASK_CGROUPS` for a process to start in this group.
    pub fn env_value(&self) -> String {
        if self.cpu == self.acct {
            self.cpu.display().to_string()
        } else {
            format!("{} {}", self.cpu.display(), self.acct.display())
        }
    }

    /// CPU time used by the group's processes so far, in nanoseconds.
    pub fn usage_ns(&self) -> Option<u64> {
        std::fs::read_to_string(self.acct.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Periods in which the group hit its quota, and the time it was held back (ns).
    pub fn throttled(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(self.cpu.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (field("nr_throttled "), field("throttled_time "))
    }
}

/// Moves every task left in `dir` to the hierarchy's root, then removes `dir`.
fn remove(dir: &Path, root: &Path) {
    if let Ok(tasks) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in tasks.lines() {
            let _ = std::fs::write(root.join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let cpu_root = self.cpu.parent().map(Path::to_path_buf).unwrap_or_default();
        let acct_root = self.acct.parent().map(Path::to_path_buf).unwrap_or_default();
        for g in &self.groups {
            remove(&g.cpu, &cpu_root);
            if g.acct != g.cpu {
                remove(&g.acct, &acct_root);
            }
        }
        remove(&self.cpu, &cpu_root);
        if self.acct != self.cpu {
            remove(&self.acct, &acct_root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_controller_is_one_clear_line() {
        let dir = std::env::temp_dir().join(format!("xtask-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = match Cgroups::under(&dir, &dir) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("no controller there"),
        };
        assert!(e.contains("cgroup v1 cpu controller") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wrapper_enters_the_groups_then_execs_the_binary() {
        let dir = std::env::temp_dir().join(format!("xtask-wrap-{}", std::process::id()));
        let path = Cgroups::wrapper(&dir, Path::new("/bin/it's")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{text}");
        assert!(text.contains(r#"echo $$ > "$d/cgroup.procs""#), "{text}");
        assert!(text.ends_with("exec '/bin/it'\\''s' \"$@\"\n"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
