/*
 * pcocc_setup: a SPANK plugin that prepares the nodes of a job for pcocc networks that need
 * root, and tears that down however the job ends.
 *
 * `pcocc alloc/batch` submit with --pcocc-setup when the job's networks need it. For such
 * a job, on every node the job runs on:
 *   slurm_spank_job_prolog (root, before any step):  pcocc internal setup init    --job J --user U
 *   slurm_spank_job_epilog (root, after the job ended, also cancelled or killed):
 *                                                    pcocc internal setup cleanup --job J --user U
 * J and U come from Slurm's spank items (S_JOB_ID, S_JOB_UID), never from the option's value or
 * the user's environment. pcocc runs by fork+exec with a fixed argv and a fixed environment
 * (plus SLURMD_NODENAME and SLURM_CONF as slurmd sets them for the prolog and epilog);
 * its output goes to slurmd's log. The only configuration is the plugin's arguments in
 * plugstack.conf (written by the admin):
 *   pcocc=/absolute/path/to/pcocc    (default /usr/bin/pcocc)
 *   timeout=SECONDS                  (default 120; pcocc is killed after that)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <slurm/spank.h>

SPANK_PLUGIN(pcocc_setup, 1);

#define PLUGIN "pcocc_setup"
#define DEFAULT_PCOCC "/usr/bin/pcocc"
#define DEFAULT_TIMEOUT_S 120

static char pcocc_path[4096] = DEFAULT_PCOCC;
static int timeout_s = DEFAULT_TIMEOUT_S;

static int opt_seen(int val, const char *optarg, int remote)
{
	(void)val; (void)optarg; (void)remote;
	return ESPANK_SUCCESS;
}

/* registered from slurm_spank_init: a static spank_options table is not seen by sbatch/salloc */
static struct spank_option setup_option = {
	"pcocc-setup", NULL,
	"Prepare the nodes for pcocc networks that need root (pcocc alloc/batch set it)",
	0, 0, opt_seen
};

/* Read the admin's arguments from plugstack.conf; an unknown one is an error. */
static int parse_args(int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		if (strncmp(av[i], "pcocc=", 6) == 0) {
			const char *p = av[i] + 6;
			if (p[0] != '/' || strlen(p) >= sizeof(pcocc_path)) {
				slurm_error(PLUGIN ": pcocc=%s: expected an absolute path", p);
				return -1;
			}
			strcpy(pcocc_path, p);
		} else if (strncmp(av[i], "timeout=", 8) == 0) {
			char *end;
			long t = strtol(av[i] + 8, &end, 10);
			if (*end || t <= 0 || t > 3600) {
				slurm_error(PLUGIN ": %s: expected seconds (1-3600)", av[i]);
				return -1;
			}
			timeout_s = (int)t;
		} else {
			slurm_error(PLUGIN ": unknown argument '%s' in plugstack.conf "
				    "(known: pcocc=PATH timeout=SECONDS)", av[i]);
			return -1;
		}
	}
	return 0;
}

/* Did the job ask for --pcocc-setup? (Slurm carries options to the prolog and epilog.) */
static int requested(spank_t sp)
{
	char *optarg = NULL;
	return spank_option_getopt(sp, &setup_option, &optarg) == ESPANK_SUCCESS;
}

/* Log each line pcocc wrote; returns when the pipe closes or the deadline passes. */
static void relay_output(int fd, time_t deadline)
{
	char buf[4096];
	size_t used = 0;

	for (;;) {
		int left = (int)(deadline - time(NULL));
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&pfd, 1, left * 1000) <= 0)
			return;
		ssize_t n = read(fd, buf + used, sizeof(buf) - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
		buf[used] = '\0';
		char *line = buf, *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			slurm_info(PLUGIN ": pcocc: %s", line);
			line = nl + 1;
		}
		used = strlen(line);
		memmove(buf, line, used);
		if (used == sizeof(buf) - 1) {  /* a very long line: log what we have */
			buf[used] = '\0';
			slurm_info(PLUGIN ": pcocc: %s", buf);
			used = 0;
		}
	}
	if (used) {
		buf[used] = '\0';
		slurm_info(PLUGIN ": pcocc: %s", buf);
	}
}

/* Run `pcocc internal setup ACTION --job JOB --user USER`; 0 if it exited with 0. */
static int run_setup(const char *action, uint32_t job, uid_t uid)
{
	char job_s[16], uid_s[16], user[256];
	struct passwd pw, *res = NULL;
	char pwbuf[4096];

	snprintf(job_s, sizeof(job_s), "%u", job);
	snprintf(uid_s, sizeof(uid_s), "%u", (unsigned)uid);
	if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res
	    && strlen(res->pw_name) < sizeof(user))
		strcpy(user, res->pw_name);
	else
		strcpy(user, uid_s);  /* pcocc accepts a numeric uid */

	char *const argv[] = { pcocc_path, "internal", "setup", (char *)action,
			       "--job", job_s, "--user", user, NULL };
	char node_env[96] = "", conf_env[4200] = "";
	char *envp[6] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "HOME=/" };
	int nenv = 3;
	/* set by slurmd for the prolog and epilog (not by the user): which node this is, and
	 * where slurm.conf is, for pcocc's scontrol calls */
	const char *node = getenv("SLURMD_NODENAME");
	if (node && *node && strlen(node) < 64 && strspn(node, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == strlen(node)) {
		snprintf(node_env, sizeof(node_env), "SLURMD_NODENAME=%s", node);
		envp[nenv++] = node_env;
	}
	const char *conf = getenv("SLURM_CONF");
	if (conf && conf[0] == '/' && strlen(conf) < 4096) {
		snprintf(conf_env, sizeof(conf_env), "SLURM_CONF=%s", conf);
		envp[nenv++] = conf_env;
	}
	envp[nenv] = NULL;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		slurm_error(PLUGIN ": pipe: %m");
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		slurm_error(PLUGIN ": fork: %m");
		close(pipefd[0]);
		close(pipefd[1]);
		return -1;
	}
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(pipefd[1], 1) < 0
		    || dup2(pipefd[1], 2) < 0)
			_exit(126);
		closefrom(3);
		setsid();
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (chdir("/") < 0)
			_exit(126);
		execve(pcocc_path, argv, envp);
		dprintf(2, "cannot run %s: %s\n", pcocc_path, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	time_t deadline = time(NULL) + timeout_s;
	relay_output(pipefd[0], deadline);
	close(pipefd[0]);

	int status;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			slurm_error(PLUGIN ": waitpid: %m");
			return -1;
		}
		if (time(NULL) >= deadline) {
			slurm_error(PLUGIN ": pcocc internal setup %s for job %u did not finish "
				    "within %d s: killed", action, job, timeout_s);
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return -1;
		}
		usleep(100 * 1000);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		slurm_info(PLUGIN ": setup %s done for job %u (user %s)", action, job, user);
		return 0;
	}
	slurm_error(PLUGIN ": pcocc internal setup %s for job %u failed (%s %d)", action, job,
		    WIFEXITED(status) ? "exit status" : "signal",
		    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	return -1;
}

static int job_action(spank_t sp, int ac, char **av, const char *action)
{
	uint32_t job = 0;
	uid_t uid = 0;

	if (!requested(sp))
		return ESPANK_SUCCESS;
	if (parse_args(ac, av) < 0)
		return -1;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS
	    || spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS) {
		slurm_error(PLUGIN ": cannot get the job id and user from Slurm");
		return -1;
	}
	return run_setup(action, job, uid);
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	/* check the arguments early, where the admin sees the error (srun, sbatch, slurmd) */
	if (parse_args(ac, av) < 0)
		return -1;
	if (spank_option_register(sp, &setup_option) != ESPANK_SUCCESS) {
		slurm_error(PLUGIN ": cannot register --%s", setup_option.name);
		return -1;
	}
	return 0;
}

int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
	return job_action(sp, ac, av, "init");
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	return job_action(sp, ac, av, "cleanup");
}
