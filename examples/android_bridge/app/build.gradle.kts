// Module build file of the LaDa Android sample. The project-level settings.gradle.kts needs
// mavenCentral() in pluginManagement.repositories, and the top-level build.gradle.kts declares
//     id("com.chaquo.python") version "16.1.0" apply false
// (see README.md for the whole set-up).

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("com.chaquo.python")
}

android {
    namespace = "org.lada.sample"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.lada.sample"
        minSdk = 24 // Chaquopy's minimum
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"

        // Python wheels are per ABI; each ABI listed here adds its own copy of onnxruntime & co.
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }

        val coordinatorUrl = (project.findProperty("lada.coordinatorUrl") as String?)
            ?: "https://coordinator.example.org"
        buildConfigField("String", "LADA_COORDINATOR_URL", "\"$coordinatorUrl\"")
    }

    buildFeatures {
        buildConfig = true
    }

    // The model is copied out of the APK once (LadaFiles.installModel); storing it uncompressed
    // makes that a plain copy instead of an inflate.
    androidResources {
        noCompress += listOf("onnx")
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

chaquopy {
    defaultConfig {
        // Must match the Python used to build (buildPython): pip resolves wheels for this version.
        version = "3.11"
        pip {
            // Android wheels that Chaquopy's own index does not carry (see README: onnxruntime,
            // tokenizers, pydantic-core), built once and kept in the project.
            options("--find-links", "${rootDir}/wheels")
            // No [train] extra: torch has no place on a phone; the device scores, takes part in
            // rounds and reports rewards, and the bridge answers "unsupported" to train.
            install("lada-client==0.1.0")
        }
    }
}

dependencies {
    implementation("androidx.core:core-ktx:1.13.1")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.activity:activity-ktx:1.9.3")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
    implementation("androidx.work:work-runtime-ktx:2.9.1")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
}
