package org.lada.sample

import android.content.Context
import android.util.Log
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.NetworkType
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import androidx.work.workDataOf
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import java.util.concurrent.TimeUnit

/**
 * Takes part in federation rounds in the background: each run makes one `round_step` call.
 *
 * The coordinator paces rounds, not the phone: most runs find no round collecting features and
 * return at once with the current phase; a run that finds one scores, waits for its allocation
 * and reports its reward (bounded by `max_wait_s`, set below WorkManager's 10-minute limit).
 */
class RoundWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {

    override suspend fun doWork(): Result = withContext(Dispatchers.IO) {
        try {
            LadaBridge.ensureConfigured(applicationContext)
            val step = LadaBridge.roundStep(applicationContext)
            val phase = step.getString("phase")
            if (step.getBoolean("ran")) {
                val result = step.getJSONObject("result")
                Log.i(
                    TAG,
                    "round ${result.getInt("round")}: ${result.getInt("n_allocated")} samples allocated, " +
                        "reward ${result.optDouble("reward")}, test accuracy ${result.optDouble("test_accuracy")}",
                )
            } else {
                Log.i(TAG, "round ${step.getInt("round")} is in phase $phase; nothing to do")
            }
            if (phase == "finished") {
                WorkManager.getInstance(applicationContext).cancelUniqueWork(WORK_NAME)
            }
            Result.success(workDataOf(KEY_PHASE to phase, KEY_RAN to step.getBoolean("ran")))
        } catch (e: LadaBridgeException) {
            if (e.isTransient) {
                Log.i(TAG, "will retry: ${e.message}")
                Result.retry()
            } else {
                // not_enrolled, bad_config, coordinator_rejected...: retrying cannot help; the UI shows it.
                Result.failure(workDataOf(KEY_ERROR_CODE to e.code, KEY_ERROR_MESSAGE to e.message))
            }
        }
    }

    companion object {
        private const val TAG = "RoundWorker"
        const val WORK_NAME = "lada-rounds"
        const val KEY_PHASE = "phase"
        const val KEY_RAN = "ran"
        const val KEY_ERROR_CODE = "error_code"
        const val KEY_ERROR_MESSAGE = "error_message"

        /** Every 15 minutes (WorkManager's minimum), on unmetered networks, not on a low battery. */
        fun schedule(context: Context) {
            val constraints = Constraints.Builder()
                .setRequiredNetworkType(NetworkType.UNMETERED)
                .setRequiresBatteryNotLow(true)
                .build()
            val request = PeriodicWorkRequestBuilder<RoundWorker>(15, TimeUnit.MINUTES)
                .setConstraints(constraints)
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 1, TimeUnit.MINUTES)
                .build()
            WorkManager.getInstance(context)
                .enqueueUniquePeriodicWork(WORK_NAME, ExistingPeriodicWorkPolicy.KEEP, request)
        }
    }
}
